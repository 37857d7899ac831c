"""Step time against forward time: how close each optimizer's step is to its forward passes.

For every optimizer x PEFT scheme on one fixed batch (SmolLM2-135M, fp32, the built-in
sentiment-demo task: 32 sequences of <= 32 tokens, the workload of the figures in docs/RESULTS.md
section 5; since candidate sequences that share their inputs share one row, that is 32
examples with their two single-token candidates, formerly 16 examples x 2 rows) this measures,
in one process and side by side:

  forward   the median time of one loss evaluation without gradients (what a ZO query costs)
  step      the median time of one real training step (zoft.train.loop.take_step)
  queries   forward passes per step, counted by the same hook as in `zoft train`
  ratio     the median over repeats of step / forward, each step against the forward measured
            just before it (ratio_min, ratio_max: the spread); a two-point ZO step cannot be
            below 2.0
  ratio_in_step  the median of step / (mean time of one forward call inside that same step),
            timed by hooks on the model: the step's own forwards are the yardstick, so the
            machine's slow and fast spells cancel (on a shared 2-core VM the forward time of
            consecutive calls varies by up to +-30%, which the plain ratio carries)

ZO optimizers are measured with each noise engine (--rngs): torch's generator and zoft's
counter-based one (zoft.perturb.counter).

plus a MeZO-style reference step written here as the baseline (MeZO's ``zo_perturb_parameters``
and ``zo_update``: the global RNG re-seeded and the Gaussian noise regenerated four times per
step, out-of-place ``p.data = p.data + scale * z``). Each cell's forward time is measured
interleaved with its steps (one forward, one step, repeated; medians of each), so a ratio is
never taken across a change of machine load.

    python bench/step_overhead.py                       # every optimizer x {full, lora}
    python bench/step_overhead.py --schemes full lora prefix prompt --out bench/results
Writes OUT/NAME.{json,csv,png} (--name, default step_overhead).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from zoft.optim import list_optimizers
from zoft.peft import SCHEMES
from zoft.train.config import TrainConfig
from zoft.train.data import micro_batch
from zoft.train.loop import take_step
from zoft.train.metering import Meter, synchronize
from zoft.train.session import Session

MEZO = "mezo-reference"


def once(fn, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def mezo_reference_step(params: list[torch.Tensor], closure, seed: int, eps: float, lr: float) -> float:
    """MeZO's step as in its trainer: four regenerations of z from the re-seeded global RNG."""

    def perturb(scale: float) -> None:
        torch.manual_seed(seed)
        for p in params:
            z = torch.normal(mean=0, std=1, size=p.size(), device=p.device, dtype=p.dtype)
            p.data = p.data + scale * eps * z

    with torch.no_grad():
        perturb(1.0)
        loss1 = float(closure())
        perturb(-2.0)
        loss2 = float(closure())
        perturb(1.0)
        grad = (loss1 - loss2) / (2 * eps)
        torch.manual_seed(seed)
        for p in params:
            z = torch.normal(mean=0, std=1, size=p.size(), device=p.device, dtype=p.dtype)
            p.data = p.data - lr * grad * z
    return loss1


class ForwardClock:
    """Time spent inside the model's forward calls (device-synchronised hooks)."""

    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        self.device, self.seconds, self.calls, self._start = device, 0.0, 0, 0.0
        model.register_forward_pre_hook(self._enter)
        model.register_forward_hook(self._leave)

    def _enter(self, module, args) -> None:
        synchronize(self.device)
        self._start = time.perf_counter()

    def _leave(self, module, args, output) -> None:
        synchronize(self.device)
        self.seconds += time.perf_counter() - self._start
        self.calls += 1


def measure(cfg: TrainConfig, repeats: int, reference: bool = False) -> dict:
    """One cell; ``reference``: time the MeZO-style step on cfg's session instead of its optimizer."""
    s = Session.build(cfg, log=lambda m: None)
    batch = s.batch(micro_batch(s.splits.train, 0, cfg.batch_size, cfg.seed))
    meter = Meter(s.model, s.device)

    def forward():
        with torch.no_grad():
            return s.objective.loss(batch)

    if reference:
        params = [p for p in s.model.parameters() if p.requires_grad]
        seeds = iter(range(10**6))
        step = lambda: mezo_reference_step(params, lambda: s.objective.loss(batch), next(seeds),
                                           cfg.eps or 1e-3, cfg.lr)
    else:
        step = lambda: take_step(s, [batch])
    forward()  # warm-up of both (compilation, first-touch allocations)
    meter.counting = True
    step()
    clock = ForwardClock(s.model, s.device)
    forward_times, step_times, in_step = [], [], []
    for _ in range(repeats):  # interleaved, so that a slow spell of the machine hits both
        meter.counting = False
        forward_times.append(once(forward, s.device))
        meter.counting = True
        clock.seconds, clock.calls = 0.0, 0
        step_times.append(once(step, s.device))
        in_step.append(step_times[-1] / (clock.seconds / clock.calls))  # against its own forwards
    forward_s, step_s = statistics.median(forward_times), statistics.median(step_times)
    ratios = sorted(st / fw for st, fw in zip(step_times, forward_times))  # each step against its forward
    in_step.sort()
    queries = meter.forward_passes / (repeats + 1)
    trainable = sum(p.numel() for p in s.model.parameters() if p.requires_grad)
    return {"optimizer": MEZO if reference else cfg.optimizer, "peft": cfg.peft, "forward_s": round(forward_s, 4),
            "step_s": round(step_s, 4), "ratio": round(statistics.median(ratios), 3),
            "ratio_min": round(ratios[0], 3), "ratio_max": round(ratios[-1], 3),
            "ratio_in_step": round(statistics.median(in_step), 3), "ratio_in_step_min": round(in_step[0], 3),
            "ratio_in_step_max": round(in_step[-1], 3),
            "queries_per_step": queries, "overhead_per_query": round(statistics.median(ratios) / queries, 3),
            "trainable_params": trainable, "tokens": int(batch.attention_mask.sum()),
            "sequences": int(batch.input_ids.shape[0]), "seq_len": int(batch.input_ids.shape[1])}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    schemes = list(dict.fromkeys(r["peft"] for r in rows))
    for r in rows:
        r["label"] = r["optimizer"] + ("" if r["rng"] in ("-", "torch") else f" ({r['rng']})")
    optimizers = list(dict.fromkeys(r["label"] for r in rows))
    fig, ax = plt.subplots(figsize=(max(8, len(optimizers) * 0.9), 4.5))
    width = 0.8 / len(schemes)
    for k, scheme in enumerate(schemes):
        vals = {r["label"]: r["ratio"] for r in rows if r["peft"] == scheme}
        xs = [i + k * width for i, o in enumerate(optimizers) if o in vals]
        ax.bar(xs, [vals[o] for o in optimizers if o in vals], width, label=scheme)
    ax.axhline(2.0, color="black", linestyle="--", linewidth=1, label="two forward passes")
    ax.set_xticks([i + width * (len(schemes) - 1) / 2 for i in range(len(optimizers))])
    ax.set_xticklabels(optimizers, rotation=35, ha="right")
    ax.set_ylabel("step time / forward time")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    # zo-finetuner needs a learned file; bench/finetuner_overhead.py measures it against zo-sgd
    ap.add_argument("--optimizers", nargs="+",
                    default=[MEZO, *(n for n in list_optimizers() if n != "zo-finetuner")])
    ap.add_argument("--schemes", nargs="+", default=["full", "lora"])
    ap.add_argument("--rngs", nargs="+", default=["torch", "counter"],
                    help="noise engines of the ZO optimizers; counter-compiled: the counter engine without its "
                         "native CPU kernel (the torch.compile path, one launch per tensor)")
    ap.add_argument("--perturbation", default="gaussian", help="perturbation of the ZO optimizers")
    ap.add_argument("--name", default="step_overhead", help="stem of the output files")
    ap.add_argument("--batch-size", type=int, default=32, help="examples (one row each)")
    ap.add_argument("--max-length", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()

    rows = []
    for scheme in args.schemes:
        for name in args.optimizers:
            zo = name != MEZO and not name.startswith("fo-")  # every other optimizer draws ZO noise
            for rng in (args.rngs if zo else ["-"]):
                cfg = TrainConfig(model=args.model, task="sentiment-demo", peft=scheme, dtype="fp32",
                                  optimizer="zo-sgd" if name == MEZO else name, lr=1e-7,
                                  eps=SCHEMES.get(scheme).default_eps if name == MEZO else None,
                                  rng=rng.removesuffix("-compiled") if zo else None,
                                  perturbation=args.perturbation if zo else None,
                                  batch_size=args.batch_size, max_length=args.max_length, device=args.device,
                                  train_size=args.batch_size, dev_size=0, test_size=0)
                os.environ["ZOFT_NATIVE"] = "0" if rng.endswith("-compiled") else "1"
                row = {**measure(cfg, args.repeats, reference=name == MEZO), "rng": rng,
                       "perturbation": "gaussian" if name == MEZO else (args.perturbation if zo else "-")}
                rows.append(row)
                print(f"{scheme:7s} {name:16s} {rng:8s} forward {row['forward_s']:.3f} s  step {row['step_s']:.3f} s"
                      f"  ratio {row['ratio']:.2f} ({row['ratio_min']:.2f}-{row['ratio_max']:.2f})"
                      f"  in step {row['ratio_in_step']:.2f} ({row['ratio_in_step_min']:.2f}-{row['ratio_in_step_max']:.2f})"
                      f"  queries/step {row['queries_per_step']:.2f}", flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    machine = {"platform": platform.platform(), "processor": platform.processor(), "torch": torch.__version__,
               "threads": torch.get_num_threads(), "device": args.device}
    (out / f"{args.name}.json").write_text(json.dumps({"machine": machine, "args": vars(args), "rows": rows}, indent=2))
    with open(out / f"{args.name}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot([dict(r) for r in rows], out / f"{args.name}.png")
    print(f"wrote {out / args.name}.json, .csv, .png")


if __name__ == "__main__":
    main()
