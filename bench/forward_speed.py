"""Forward-pass throughput of zoft's training objective, per precision and execution mode.

A ZO run's wall time is its number of forward passes times the cost of one, so this measures
the forward as the objective runs it (Objective.loss under no_grad: the LM head only at the
scored positions) on SmolLM2-135M, for an SST-2-shaped and a MultiRC-shaped batch of real
examples, in one process, modes interleaved round by round (a slow spell of the machine hits
every mode), medians over rounds:

  fp32       fp32 weights, eager (the reference every ratio is taken against)
  bf16       bf16 weights, eager
  amp-bf16   fp32 weights, matmuls under torch.autocast(bf16)
  compiled   bf16 weights, the decoder body under torch.compile(dynamic=True) (the LM head and
             its scored-position gather stay eager); compile time reported apart
  stacked    bf16, the batch repeated twice in one forward (2B rows): the best case of
             evaluating the + and - points of a PEFT step in one batched forward (the frozen
             base read once); reported as its time over two single bf16 forwards
  bf16+buckets  bf16, the rows run in length buckets (zoft's default, bucket_positions 64)
             instead of one batch padded to its longest row; every other mode runs unbucketed

FLOP rate: 2 x (matmul weights of the decoder layers) x (padded tokens) + attention
(4 x layers x rows x T^2 x hidden) + the LM head at the scored positions, over the median
time (for bf16+buckets, summed over the buckets actually run). The peak it is compared with is measured here, as the rate of a large square matmul
(--gemm, default 2048) in fp32 and in bf16 on the same threads: the machine's achievable peak,
which the theoretical figure (cores x clock x FLOPs per cycle) is also printed beside.

ZO-SGD steps: the full training step (zoft.train.loop.take_step) of zo-sgd with full
fine-tuning and LoRA in fp32, bf16 and amp-bf16 (unbucketed), and what dtype auto runs
with buckets (LoRA bf16+buckets, full amp-bf16+buckets), each step timed against an fp32 eager
forward of the same scheme measured just before it (steps in fp32-forward units).

Threads and allocator (--probes): the bf16 forward in subprocesses under different
environments (default; OMP_NUM_THREADS=1; glibc malloc kept from returning freed activation
memory to the kernel: MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_/MALLOC_TOP_PAD_), with the
minor page faults per forward (getrusage), alternated twice.

    python bench/forward_speed.py --data-dir ../shared/datasets          # ~10 min on 2 cores
    python bench/forward_speed.py --rounds 3 --no-compile --no-probes     # quicker
Writes OUT/NAME.{json,csv,png} (default bench/results/forward_speed).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from zoft.tasks import load_splits
from zoft.train.config import DEFAULT_BUCKET_POSITIONS, TrainConfig
from zoft.train.data import micro_batch
from zoft.train.loop import take_step
from zoft.train.metering import synchronize
from zoft.train.objective import Batch, _rows_of, length_buckets
from zoft.train.session import Session

WORKLOADS = {  # name -> (task, examples per batch, max_length)
    "sst2": ("sst2", 16, 256),
    "multirc": ("multirc", 4, 512),
}
PROBE_ENVS = {
    "default": {},
    "omp1": {"OMP_NUM_THREADS": "1"},
    "malloc-keep": {"MALLOC_MMAP_THRESHOLD_": str(32 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(2**34),
                    "MALLOC_TOP_PAD_": str(256 * 2**20)},
}


def timed(fn, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def session(model: str, peft: str, dtype: str, task: str, data_dir: str | None, max_length: int,
            buckets: int = 0) -> Session:
    cfg = TrainConfig(model=model, task=task, data_dir=data_dir, peft=peft, dtype=dtype, optimizer="zo-sgd",
                      lr=1e-6 if peft == "full" else 1e-4, train_size=64, dev_size=1, test_size=1,
                      max_length=max_length, batch_size=16, bucket_positions=buckets)
    return Session.build(cfg, log=lambda m: None)


def stacked(batch: Batch) -> Batch:
    """``batch`` twice along the rows (the scored positions of the copy point at its rows)."""
    rows = batch.input_ids.shape[0]
    cat = lambda a, b: torch.cat([a, b])
    return Batch(cat(batch.input_ids, batch.input_ids), cat(batch.attention_mask, batch.attention_mask),
                 cat(batch.rows, batch.rows + rows), cat(batch.cols, batch.cols), cat(batch.targets, batch.targets),
                 cat(batch.cands, batch.cands + len(batch.owners)), cat(batch.owners, batch.owners + len(batch.labels)),
                 cat(batch.labels, batch.labels), cat(batch.first, batch.first + len(batch.owners)),
                 cat(batch.sizes, batch.sizes))


def bucketed_flops(model: torch.nn.Module, batch: Batch, min_positions: int) -> float:
    """forward_flops of the length buckets that zoft runs instead of ``batch``."""
    buckets = length_buckets(batch.attention_mask.sum(1).tolist(), min_positions)
    return sum(forward_flops(model, _rows_of(batch, b)[0]) for b in buckets)


def forward_flops(model: torch.nn.Module, batch: Batch) -> float:
    """Matmul FLOPs of one forward of ``batch`` (padded positions included: they are computed)."""
    cfg = model.config
    rows, width = batch.input_ids.shape
    head = model.get_output_embeddings()
    linear = sum(m.weight.numel() for name, m in model.named_modules()
                 if isinstance(m, torch.nn.Linear) and m is not head)
    attention = 4 * cfg.num_hidden_layers * rows * width * width * cfg.hidden_size
    return 2.0 * linear * rows * width + attention + 2.0 * head.weight.numel() * batch.rows.numel()


def gemm_peak(n: int, dtype: torch.dtype, repeats: int = 5) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = min(timed(lambda: a @ b, torch.device("cpu")) for _ in range(repeats))
    return 2.0 * n ** 3 / best


def theoretical_peak() -> dict:
    """cores x clock x FLOPs per cycle, from /proc/cpuinfo; the per-cycle figures assume two
    256-bit FMA pipes per core (AMD Zen 4, which executes AVX-512 as two 256-bit halves): fp32
    2 x 8 lanes x 2 = 32, bf16 (VDPBF16PS: 16 products and sums per 256 bits) 2 x 16 x 2 = 64."""
    mhz, model = 0.0, ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz") and not mhz:
                mhz = float(line.split(":")[1])
            if line.startswith("model name") and not model:
                model = line.split(":")[1].strip()
    except OSError:
        pass
    cores = torch.get_num_threads()
    return {"cpu": model, "mhz": mhz, "threads": cores,
            "fp32_flops": cores * mhz * 1e6 * 32, "bf16_flops": cores * mhz * 1e6 * 64}


def forward_rows(args, sessions: dict, batches: dict) -> list[dict]:
    rows = []
    for work, batch in batches.items():
        fns = {"fp32": lambda s=sessions["fp32"], b=batch: s.objective.loss(b),
               "bf16": lambda s=sessions["bf16"], b=batch: s.objective.loss(b),
               "amp-bf16": lambda s=sessions["amp-bf16"], b=batch: s.objective.loss(b)}
        double = stacked(batch)
        fns["stacked"] = lambda s=sessions["bf16"], b=double: s.objective.loss(b)
        fns["bf16+buckets"] = lambda s=sessions["bf16+buckets"], b=batch: s.objective.loss(b)
        compile_s = None
        if args.compile:
            s = sessions["compiled"]
            compile_s = timed(lambda: s.objective.loss(batch), s.device)  # first call compiles
            fns["compiled"] = lambda s=s, b=batch: s.objective.loss(b)
        times = {m: [] for m in fns}
        with torch.no_grad():
            for fn in fns.values():
                fn()  # warm-up
            for r in range(args.rounds):
                for mode, fn in fns.items():
                    times[mode].append(timed(fn, torch.device("cpu")))
                print(f"  {work} round {r + 1}/{args.rounds}: "
                      + ", ".join(f"{m} {t[-1]:.3f}s" for m, t in times.items()), flush=True)
        tokens = int(batch.attention_mask.sum())
        flops = forward_flops(sessions["fp32"].model, batch)
        ref = statistics.median(times["fp32"])
        for mode, ts in times.items():
            med = statistics.median(ts)
            n_tok, n_flop = (2 * tokens, 2 * flops) if mode == "stacked" else (tokens, flops)
            if mode == "bf16+buckets":  # fewer positions computed: count those
                n_flop = bucketed_flops(sessions["fp32"].model, batch, DEFAULT_BUCKET_POSITIONS)
            peak = args.peak["fp32" if mode == "fp32" else "bf16"]
            row = {"workload": work, "mode": mode, "rows": int(batch.input_ids.shape[0]) * (2 if mode == "stacked" else 1),
                   "width": int(batch.input_ids.shape[1]), "tokens": n_tok, "median_s": round(med, 4),
                   "min_s": round(min(ts), 4), "max_s": round(max(ts), 4),
                   "tokens_per_s": round(n_tok / med, 1), "speedup_vs_fp32": round((n_tok / med) / (tokens / ref), 3),
                   "gflops": round(n_flop / med / 1e9, 2), "fraction_of_gemm_peak": round(n_flop / med / peak, 3)}
            if mode == "stacked":
                row["time_vs_two_bf16_forwards"] = round(med / (2 * statistics.median(times["bf16"])), 3)
            if mode == "compiled":
                row["compile_s"] = round(compile_s, 1)
            if mode == "bf16+buckets":
                row["computed_positions_fraction"] = round(n_flop / flops, 3)
            rows.append(row)
    return rows


def step_rows(args, batches_for, scheme_sessions: dict) -> list[dict]:
    rows = []
    for scheme, by_mode in scheme_sessions.items():
        ref = by_mode["fp32"]
        batch = batches_for(ref)
        fwd, steps = [], {m: [] for m in by_mode}
        with torch.no_grad():
            ref.objective.loss(batch)
        for s in by_mode.values():
            take_step(s, [batch])  # warm-up
        for r in range(args.rounds):
            for mode, s in by_mode.items():
                with torch.no_grad():
                    fwd.append(timed(lambda: ref.objective.loss(batch), ref.device))
                steps[mode].append((timed(lambda: take_step(s, [batch]), s.device), fwd[-1]))
            print(f"  steps {scheme} round {r + 1}/{args.rounds}: "
                  + ", ".join(f"{m} {v[-1][0]:.3f}s" for m, v in steps.items()), flush=True)
        for mode, pairs in steps.items():
            rows.append({"scheme": scheme, "mode": mode, "step_s": round(statistics.median(p[0] for p in pairs), 4),
                         "fp32_forward_s": round(statistics.median(p[1] for p in pairs), 4),
                         "step_in_fp32_forwards": round(statistics.median(p[0] / p[1] for p in pairs), 3),
                         "trainable_params": sum(p.numel() for p in by_mode[mode].model.parameters() if p.requires_grad)})
    return rows


def probe(args) -> None:
    """One subprocess measurement: bf16 forwards of the SST-2 batch, time and page faults."""
    task, n, max_length = WORKLOADS["sst2"]
    s = session(args.model, "full", "bf16", task, args.data_dir, max_length)
    batch = s.batch(micro_batch(s.splits.train, 0, n, 0))
    times, faults = [], []
    with torch.no_grad():
        s.objective.loss(batch)
        for _ in range(args.rounds):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            times.append(timed(lambda: s.objective.loss(batch), s.device))
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(json.dumps({"median_s": statistics.median(times), "page_faults": statistics.median(faults),
                      "threads": torch.get_num_threads()}))


def probe_rows(args) -> list[dict]:
    results = {name: [] for name in PROBE_ENVS}
    for r in range(2):
        for name, extra in PROBE_ENVS.items():
            cmd = [sys.executable, __file__, "--probe", "--model", args.model, "--rounds", str(args.rounds)]
            if args.data_dir:
                cmd += ["--data-dir", args.data_dir]
            out = subprocess.run(cmd, env={**os.environ, **extra}, capture_output=True, text=True, check=True)
            results[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"  probe {name} pass {r + 1}: {results[name][-1]}", flush=True)
    ref = statistics.median(p["median_s"] for p in results["default"])
    return [{"env": name, "settings": " ".join(f"{k}={v}" for k, v in PROBE_ENVS[name].items()) or "-",
             "median_s": round(statistics.median(p["median_s"] for p in ps), 4),
             "vs_default": round(statistics.median(p["median_s"] for p in ps) / ref, 3),
             "page_faults_per_forward": int(statistics.median(p["page_faults"] for p in ps)),
             "threads": ps[0]["threads"]} for name, ps in results.items()]


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    works = list(dict.fromkeys(r["workload"] for r in result["forward"]))
    modes = list(dict.fromkeys(r["mode"] for r in result["forward"]))
    width = 0.8 / len(works)
    for k, work in enumerate(works):
        vals = {r["mode"]: r["speedup_vs_fp32"] for r in result["forward"] if r["workload"] == work}
        axes[0].bar([i + k * width for i in range(len(modes))], [vals.get(m, 0) for m in modes], width, label=work)
    axes[0].axhline(1.8, color="black", linestyle="--", linewidth=1, label="goal 1.8x")
    axes[0].set_xticks([i + width * (len(works) - 1) / 2 for i in range(len(modes))], modes)
    axes[0].set_ylabel("tokens/s relative to fp32 eager")
    axes[0].set_title("training forward, SmolLM2-135M")
    axes[0].legend()
    steps = result["steps"]
    schemes = list(dict.fromkeys(r["scheme"] for r in steps))
    smodes = list(dict.fromkeys(r["mode"] for r in steps))
    width = 0.8 / len(schemes)
    for k, scheme in enumerate(schemes):
        vals = {r["mode"]: r["step_in_fp32_forwards"] for r in steps if r["scheme"] == scheme}
        axes[1].bar([i + k * width for i in range(len(smodes))], [vals.get(m, 0) for m in smodes], width, label=scheme)
    axes[1].axhline(1.2, color="black", linestyle="--", linewidth=1, label="goal 1.2 (LoRA)")
    axes[1].set_xticks([i + width * (len(schemes) - 1) / 2 for i in range(len(smodes))], smodes)
    axes[1].set_ylabel("ZO-SGD step / fp32 eager forward")
    axes[1].set_title("ZO-SGD step, SST-2 batch")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--data-dir", default=os.environ.get("ZOFT_DATA_DIR"),
                    help="official data layout (default $ZOFT_DATA_DIR)")
    ap.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--gemm", type=int, default=2048, help="side of the square matmul that measures the peak")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--steps", action=argparse.BooleanOptionalAction, default=True, help="ZO-SGD step times")
    ap.add_argument("--probes", action=argparse.BooleanOptionalAction, default=True,
                    help="thread and allocator settings, in subprocesses")
    ap.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--name", default="forward_speed")
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()
    if args.probe:
        return probe(args)
    if not args.data_dir:
        raise SystemExit("forward_speed: needs the official data (--data-dir or $ZOFT_DATA_DIR) for real SST-2 "
                         "and MultiRC batches")

    args.peak = {"fp32": gemm_peak(args.gemm, torch.float32), "bf16": gemm_peak(args.gemm, torch.bfloat16)}
    theory = theoretical_peak()
    print(f"matmul peak {args.gemm}^3: fp32 {args.peak['fp32'] / 1e9:.1f} GFLOP/s, bf16 {args.peak['bf16'] / 1e9:.1f} "
          f"GFLOP/s (theoretical {theory['fp32_flops'] / 1e9:.0f} / {theory['bf16_flops'] / 1e9:.0f})", flush=True)
    forward, steps = [], []
    for work in args.workloads:
        task, n, max_length = WORKLOADS[work]
        sessions = {m: session(args.model, "full", m, task, args.data_dir, max_length) for m in ("fp32", "bf16", "amp-bf16")}
        sessions["bf16+buckets"] = session(args.model, "full", "bf16", task, args.data_dir, max_length,
                                           DEFAULT_BUCKET_POSITIONS)
        if args.compile:
            sessions["compiled"] = session(args.model, "full", "bf16", task, args.data_dir, max_length)
            sessions["compiled"].model.get_decoder().compile(dynamic=True)
        first = sessions["fp32"]
        batch = first.batch(micro_batch(first.splits.train, 0, n, 0))
        forward += forward_rows(args, sessions, {work: batch})
        del sessions
    if args.steps:
        task, n, max_length = WORKLOADS["sst2"]
        by_scheme = {scheme: {m: session(args.model, scheme, m, task, args.data_dir, max_length)
                              for m in ("fp32", "bf16", "amp-bf16")} for scheme in ("lora", "full")}
        for scheme, mode in (("lora", "bf16"), ("full", "amp-bf16")):  # what dtype auto runs, with buckets
            by_scheme[scheme][f"{mode}+buckets"] = session(args.model, scheme, mode, task, args.data_dir, max_length,
                                                           DEFAULT_BUCKET_POSITIONS)
        steps = step_rows(args, lambda s: s.batch(micro_batch(s.splits.train, 0, n, 0)), by_scheme)
        del by_scheme
    probes = probe_rows(args) if args.probes else []
    result = {"model": args.model, "rounds": args.rounds, "torch": torch.__version__, "platform": platform.platform(),
              "threads": torch.get_num_threads(), "gemm_side": args.gemm,
              "gemm_peak_gflops": {k: round(v / 1e9, 1) for k, v in args.peak.items()},
              "theoretical_peak": theory, "forward": forward, "steps": steps, "probes": probes}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    with open(out / f"{args.name}.csv", "w", newline="") as f:
        for table in ("forward", "steps", "probes"):
            if result[table]:
                writer = csv.DictWriter(f, fieldnames=["table", *dict.fromkeys(k for r in result[table] for k in r)])
                writer.writeheader()
                writer.writerows({"table": table, **r} for r in result[table])
    plot(result, out / f"{args.name}.png")
    for table in ("forward", "steps", "probes"):
        for r in result[table]:
            print(table, json.dumps(r))
    print(f"wrote {out / args.name}.{{json,csv,png}}")


if __name__ == "__main__":
    main()
