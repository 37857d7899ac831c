"""The ``zoft`` command line: list, train, eval, bench, report, learn-finetuner.

Settings merge in order: TrainConfig defaults <- --config FILE (YAML/TOML/JSON) <- flags.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from zoft.train.config import TrainConfig, read_config_file

FLAGS: list[tuple[str, type, str]] = [
    ("model", str, "hub id, local folder or alias (zoft list)"),
    ("dtype", str, "auto (default: bf16 compute for ZO where the CPU/GPU has native bf16, else fp32) | fp32 | bf16 | fp16 | amp-bf16 (fp32 weights, bf16 autocast)"),
    ("device", str, "auto | cpu | cuda"),
    ("quantize", str, "int8 | int4: store the frozen base's linear layers quantized (LoRA, prefix, prompt; "
                      "a quarter / about a sixth of fp32; docs/RESULTS.md)"),
    ("device-map", str, "accelerate placement across devices, e.g. auto (models larger than one device; ZO needs forwards only)"),
    ("task", str, "task name (zoft list)"),
    ("data-dir", str, "folder in the official data layout (default: $ZOFT_DATA_DIR, else the hub)"),
    ("train-file", str, "your own data: a .jsonl/.csv/.tsv file (classification: text, label; choice: context, choices, answer)"),
    ("dev-file", str, "your own dev data (default: sampled from --train-file)"),
    ("test-file", str, "your own test data (default: sampled from --train-file or --dev-file)"),
    ("format", str, "shape of your data: classification | choice | generation | chat (default: inferred from the columns)"),
    ("template", str, "classification prompt with {text} (default: '{text}\\nAnswer:')"),
    ("verbalizer", str, "classification label words, e.g. '0=terrible,1=great' (default: the labels; 0/1: no/yes)"),
    ("train-size", int, "training examples sampled (MeZO: 1000)"),
    ("dev-size", int, "dev examples (MeZO: 500)"),
    ("test-size", int, "test examples (MeZO: 1000)"),
    ("max-length", int, "tokens per sequence (prompts are cut from the left)"),
    ("bucket-positions", int, "run a batch's rows in length buckets of >= N padded positions (default 64; 0: one padded batch)"),
    ("peft", str, ""),  # help: _choices_help
    ("optimizer", str, ""),  # help: _choices_help
    ("lr", float, "learning rate"),
    ("eps", float, ""),  # help: _choices_help
    ("q", int, "ZO queries per step"),
    ("estimator", str, ""),  # help: _choices_help
    ("perturbation", str, ""),  # help: _choices_help
    ("rng", str, ""),  # help: _choices_help
    ("momentum", float, "momentum / JAGUAR beta"),
    ("weight-decay", float, "weight decay (never on biases and norms)"),
    ("finetuner", str, "zo-finetuner's learned file, written by zoft learn-finetuner"),
    ("steps", int, "optimizer steps (at most)"),
    ("lr-schedule", str, "constant | linear | cosine: the lr over --steps (decays to 0 at the last step)"),
    ("warmup-steps", int, "linear lr warmup over the first N steps"),
    ("forward-budget", int, "stop once this many training forward passes are spent (0: no limit)"),
    ("batch-size", int, "examples per micro-batch"),
    ("grad-accum", int, "micro-batches per step (ZO: all at the same perturbation)"),
    ("eval-every", int, "dev evaluation every N steps and at the end (0: never)"),
    ("save-every", int, "checkpoint every N steps"),
    ("log-every", int, "metrics row every N steps"),
    ("seed", int, "run seed (data order, ZO seed stream)"),
    ("objective", str, "what training minimises: loss (cross-entropy) | accuracy (1 - accuracy of the "
                       "batch) | f1 (1 - macro F1) | python:MODULE:FUNCTION (FUNCTION(predictions, labels) "
                       "-> float to minimise); a metric is not differentiable: ZO only, with a larger "
                       "--eps and --lr (docs/ALGORITHMS.md)"),
    ("out", str, "run directory"),
]


FIRST_RUN = {"lr": 3e-3, "lr_schedule": "linear", "steps": 200, "eval_every": 50,
             "eval_zero_shot": True}
"""What a bare ``zoft train`` (no flags but --out, no --config) adds to TrainConfig's defaults: ZO-SGD with
LoRA on SmolLM2-135M and sentiment-demo at the lr and schedule the demo pilot chose, scoring
zero-shot first so that the last line shows what training gained (docs/RESULTS.md section 13)."""


def _key_value(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        return key.replace("-", "_"), json.loads(raw)
    except json.JSONDecodeError:
        return key.replace("-", "_"), raw


def _choices_help() -> dict[str, str]:
    """Help for the flags that name a registered plugin, listing what is registered now."""
    from zoft.estimators import ESTIMATORS
    from zoft.optim import list_optimizers
    from zoft.peft import SCHEMES
    from zoft.perturb import PERTURBATIONS, RNGS

    return {"peft": " | ".join(SCHEMES.names()), "estimator": " | ".join(ESTIMATORS.names()),
            "perturbation": " | ".join(PERTURBATIONS), "optimizer": ", ".join(list_optimizers()),
            "rng": " | ".join(RNGS) + " (ZO noise engine; default: counter where the scheme trains "
                   "every weight, e.g. full, else torch)",
            "eps": "ZO perturbation size mu (default by scheme: " + ", ".join(
                f"{n} {SCHEMES.get(n).default_eps:g}" for n in SCHEMES.names()) + ")"}


def _add_train_flags(p: argparse.ArgumentParser) -> None:
    generated = _choices_help()
    for name, kind, help_text in FLAGS:
        p.add_argument(f"--{name}", type=kind, default=argparse.SUPPRESS, help=generated.get(name, help_text))
    p.add_argument("--config", help="YAML/TOML/JSON file with the same keys; flags override it")
    p.add_argument("--opt", action="append", type=_key_value, default=[], metavar="KEY=VALUE",
                   help="other optimizer hyperparameters, e.g. --opt betas=[0.9,0.99]")
    p.add_argument("--peft-opt", action="append", type=_key_value, default=[], metavar="KEY=VALUE",
                   help="PEFT options, e.g. --peft-opt lora_r=16")
    p.add_argument("--tensorboard", action="store_true", default=argparse.SUPPRESS)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                   help="torch.compile the decoder body (dynamic shapes; 14-16%% faster bf16 forwards on "
                        "2 CPU cores after ~80 s of compiling, docs/RESULTS.md 14a)")
    p.add_argument("--eval-zero-shot", action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                   help="score dev and test before the first step; the last line compares them")
    p.add_argument("--stream-base", action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                   help="read the frozen decoder blocks from the model folder's safetensors files at each "
                        "forward instead of holding them in memory (LoRA/prefix/prompt, zeroth-order only)")
    p.add_argument("--offload-blocks", action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                   help="full fine-tuning with the decoder blocks kept in CPU memory and copied to the device "
                        "one at a time, both perturbed forwards run per block (ZO2's design; zo-sgd, "
                        "zo-sgd-mmt, zo-sgd-sign, zo-adam, zo-muon)")
    p.add_argument("--master-weights", action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                   help="fp32 master copies of bf16/fp16 trainable tensors (ZO; default: on for "
                        "PEFT in bf16/fp16, off for full fine-tuning)")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values: dict[str, Any] = read_config_file(args.config) if args.config else {}
    switches = [("tensorboard", bool, ""), ("master-weights", bool, ""), ("stream-base", bool, ""),
                ("offload-blocks", bool, ""), ("eval-zero-shot", bool, ""), ("compile", bool, "")]
    given = [n for n, _, _ in FLAGS + switches if n != "out" and hasattr(args, n.replace("-", "_"))]
    if getattr(args, "command", None) == "train" and not (args.config or args.opt or args.peft_opt or given):
        print("zoft: no settings given: the first-run preset " + " ".join(
            f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}") for k, v in FIRST_RUN.items()),
            file=sys.stderr)
        values = dict(FIRST_RUN)
    for name, _, _ in FLAGS + switches:
        key = name.replace("-", "_")
        if hasattr(args, key):
            values[key] = getattr(args, key)
    if values.get("train_file") and "task" not in values:
        values["task"] = "own"
    if args.opt:
        values["opt_options"] = {**values.get("opt_options", {}), **dict(args.opt)}
    if args.peft_opt:
        values["peft_options"] = {**values.get("peft_options", {}), **dict(args.peft_opt)}
    return TrainConfig.from_dict(values, source=args.config or "command line")


RESUME_FLAGS = ("steps", "data_dir")
"""What --resume may change: the step count (to extend a run) and where the data files are (a
fresh machine). Every other setting is the run's own, from its config.json."""


def _given_flags(args: argparse.Namespace) -> list[str]:
    """The settings given on the command line (flags default to absent, not to a value)."""
    names = [n.replace("-", "_") for n, _, _ in FLAGS] + ["tensorboard", "compile", "eval_zero_shot",
                                                          "master_weights", "stream_base", "offload_blocks"]
    given = [n for n in names if hasattr(args, n)]
    return given + [n for n in ("config", "opt", "peft_opt") if getattr(args, n, None)]


def _cmd_train(args: argparse.Namespace) -> int:
    from zoft.train.loop import train
    from zoft.train.run_files import PAUSED, read_run_config

    if args.resume:  # the run's own config; only --steps may extend it
        refused = [n for n in _given_flags(args) if n not in RESUME_FLAGS + ("out",)]
        if refused or getattr(args, "out", args.resume) != args.resume:
            flags = " ".join("--" + n.replace("_", "-") for n in refused or ["out"])
            raise ValueError(f"--resume continues {args.resume} with its own settings (its config.json); "
                             f"{flags} cannot change them (only --steps and --data-dir can); "
                             "start a new run with another --out instead")
        run_dir = Path(args.resume)
        cfg = read_run_config(run_dir)
        cfg.out = str(run_dir)
        cfg.steps = getattr(args, "steps", cfg.steps)
        cfg.data_dir = getattr(args, "data_dir", cfg.data_dir)
        summary = train(cfg.validate(), resume=True, pause_after=args.pause_after_passes)
    else:
        summary = train(config_from_args(args), pause_after=args.pause_after_passes)
    if summary.get("status") == "paused":
        return PAUSED
    return 0 if summary.get("status") == "finished" else 1


def _cmd_eval(args: argparse.Namespace) -> int:
    from zoft.train.evaluate import evaluate_command

    print(json.dumps(evaluate_command(args.run_dir, config_from_args(args), args.split), indent=2))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from zoft.train.export import export_run

    record = export_run(args.run_dir, args.out, adapter_only=args.adapter_only)
    print(f"wrote {record['written']} to {args.out} (weights: {record['weights']})")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from zoft.bench import build_report, expand_spec, load_spec, run_grid
    from zoft.bench.grid import select

    cells = expand_spec(load_spec(args.spec), quick=args.quick)
    if args.only:
        cells = select(cells, args.only)
        if not cells:
            raise ValueError(f"--only {' '.join(args.only)} matches no cell of {args.spec}")
    out = Path(args.out)
    records = run_grid(cells, out, drop_weights=args.drop_weights, jobs=args.jobs, piece_passes=args.piece_passes)
    build_report(out)
    paused = [r for r in records if r["summary"].get("status") == "paused"]
    failed = [r for r in records if r["summary"].get("status") not in ("finished", "paused")]
    print(f"{len(records) - len(failed) - len(paused)} of {len(records)} cells finished"
          + (f", {len(paused)} paused (rerun to continue)" if paused else "") + f"; tables in {out / 'tables.md'}")
    return 1 if failed else 0


def _cmd_report(args: argparse.Namespace) -> int:
    from zoft.bench import build_report

    if args.pack:
        from zoft.bench.store import ARCHIVE, pack

        packed = pack(Path(args.out))
        print(f"packed {len(packed)} finished cells into {Path(args.out) / ARCHIVE}")
    rows = build_report(Path(args.out))
    print(f"{len(rows)} cells; wrote {Path(args.out) / 'results.csv'}, tables.md and plots")
    return 0


def _cmd_learn(args: argparse.Namespace) -> int:
    from zoft.train.learn import LearnConfig, learn_command

    learn = LearnConfig(**{k: getattr(args, k) for k in ("meta_lr", "reset_every", "epochs_per_reset",
                                                          "group_by", "hidden")})
    if not hasattr(args, "out"):
        raise ValueError("learn-finetuner needs --out FILE: where to write the learned FineTuner")
    cfg = config_from_args(args)
    learn.steps, learn.lr, learn.eps = cfg.steps, cfg.lr, cfg.eps
    summary = learn_command(cfg, learn, cfg.out)  # a summary goes beside it, suffix .json
    print(json.dumps(summary, indent=2))
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from zoft.estimators import ESTIMATORS
    from zoft.models import list_model_aliases
    from zoft.optim import list_optimizers
    from zoft.peft import SCHEMES
    from zoft.perturb import PERTURBATIONS, RNGS
    from zoft.tasks import TASKS

    for title, names in [("optimizers", list_optimizers()), ("estimators", ESTIMATORS.names()),
                         ("perturbations", PERTURBATIONS), ("noise engines (rng)", list(RNGS)),
                         ("tasks", TASKS.names()),
                         ("peft schemes", SCHEMES.names()), ("model aliases", list(list_model_aliases()))]:
        print(f"{title}: {', '.join(names)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zoft", description="Zeroth-order fine-tuning of language models")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="optimizers, estimators, perturbations, tasks, schemes, models").set_defaults(
        func=_cmd_list)
    train = sub.add_parser("train", help="fine-tune a model on a task")
    _add_train_flags(train)
    train.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR (its config.json)")
    train.add_argument("--pause-after-passes", type=int, metavar="N",
                       help="end this piece of the run after N training forward passes, with a checkpoint "
                            "(exit status 75; --resume continues): a long run in pieces")
    train.set_defaults(func=_cmd_train)
    ev = sub.add_parser("eval", help="evaluate zero-shot (--model/--task) or a trained RUN_DIR")
    ev.add_argument("run_dir", nargs="?", help="a run directory written by zoft train")
    ev.add_argument("--split", default="test", choices=["dev", "test"])
    _add_train_flags(ev)
    ev.set_defaults(func=_cmd_eval)
    export = sub.add_parser("export", help="write a trained run as a folder transformers/peft load without zoft")
    export.add_argument("run_dir", help="a run directory written by zoft train")
    export.add_argument("--out", required=True, help="folder to write (must not exist or be empty)")
    export.add_argument("--adapter-only", action="store_true",
                        help="LoRA: write the peft adapter instead of merging it into the base")
    export.set_defaults(func=_cmd_export)
    bench = sub.add_parser("bench", help="run a grid of training runs from a YAML spec (resumable)")
    bench.add_argument("spec", help="grid spec (YAML/TOML/JSON): base, grid, per_optimizer, quick")
    bench.add_argument("--out", required=True, help="folder for cells/, results.csv, tables.md, plots")
    bench.add_argument("--quick", action="store_true", help="apply the spec's quick overrides (minutes)")
    bench.add_argument("--only", nargs="+", metavar="KEY=VALUE", default=[],
                       help="run only the cells matching every KEY=VALUE (e.g. seed=0 peft=lora): a piece of the grid")
    bench.add_argument("--drop-weights", action="store_true",
                       help="delete each finished cell's weights, best weights and optimizer state "
                            "(keeps config, metrics, summary; a full fine-tuning cell is a model copy)")
    bench.add_argument("--jobs", type=int, default=1,
                       help="cells run at once, each with cores // jobs torch threads (default 1: one at a "
                            "time with torch's own thread count); peak memory adds up across them")
    bench.add_argument("--piece-passes", type=int, metavar="N",
                       help="advance each unfinished cell by at most N training forward passes, then pause it "
                            "with a checkpoint (rerun the same command to continue): a long grid in pieces")
    bench.set_defaults(func=_cmd_bench)
    learn = sub.add_parser("learn-finetuner", help="meta-train a ZO Fine-tuner (learned per-block "
                           "perturbation scales) for a base model: --model M --task T --peft P --steps N")
    _add_train_flags(learn)
    learn.add_argument("--meta-lr", type=float, default=1e-3, help="Adam learning rate of the PertNNs")
    learn.add_argument("--reset-every", type=int, default=0,
                       help="steps between resets of the model to its start (0: --epochs-per-reset epochs)")
    learn.add_argument("--epochs-per-reset", type=int, default=5, help="epochs of the data between resets")
    learn.add_argument("--group-by", default="tensor", choices=["tensor", "module"],
                       help="one PertNN per tensor or per module (fewer networks for big models)")
    learn.add_argument("--hidden", type=int, default=64, help="PertNN width")
    learn.set_defaults(func=_cmd_learn)
    report = sub.add_parser("report", help="rebuild results.csv, tables.md and plots of a bench folder")
    report.add_argument("out", help="a folder written by zoft bench")
    report.add_argument("--pack", action="store_true",
                        help="first move finished cells' text files into OUT/cells.zip (the report reads both)")
    report.set_defaults(func=_cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    from zoft.distributed import PeerFailure
    from zoft.tasks.data import DataUnavailableError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, DataUnavailableError) as err:
        print(f"zoft: error: {one_line(err)}", file=sys.stderr)
        return 2
    except OSError as err:  # a file zoft was asked to read or write: name it
        where = f" {err.filename}" if err.filename else ""
        print(f"zoft: error: cannot use{where}: {err.strerror or one_line(err)}", file=sys.stderr)
        return 2
    except PeerFailure as err:  # the cause is in the other rank's log, not in a traceback here
        print(f"zoft: error: {one_line(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def one_line(err: BaseException) -> str:
    """An error message on one line (some libraries' messages run over several)."""
    text = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    return text or type(err).__name__


if __name__ == "__main__":
    sys.exit(main())
