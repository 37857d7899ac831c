"""Block offloading (``--offload-blocks``, zoft.offload) against the in-memory ZO step, side by side.

For one model with full fine-tuning, two sessions in one process: the ordinary one and one
whose decoder blocks live in CPU memory and are copied to the compute device once per step
(ZO2's design). Rounds alternate the two (a slow spell of the machine hits both), each round
timing ``--steps`` training steps of each on the same SST-2 batch of 16; medians over rounds.
Reported: s/step of each, the offloaded step's throughput as a fraction of the in-memory
one's, bytes copied to and from the device per step, the bytes that must be on the device
(resident tensors + the most blocks there at once) against the whole model's, and whether the
two sessions' losses and weights are still bitwise equal after the timed steps.

On a CPU-only machine the "device" is another CPU buffer, so the copies are memcpys and
the resident figure is what a GPU would hold; run it with ``--device cuda`` where one is lent.
Length buckets are off in both sessions (the offloaded step runs one forward per perturbation).

    ZOFT_DATA_DIR=../shared/datasets python bench/offload_step.py --out docs/results/offload_step
Writes OUT/offload_step.{json,csv,png}.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import time
from pathlib import Path

import torch

from zoft.train import checkpoint
from zoft.train.config import TrainConfig
from zoft.train.loop import take_step
from zoft.train.session import Session


def session(args, offload: bool) -> Session:
    cfg = TrainConfig(model=args.model, task="sst2", data_dir=args.data_dir, peft="full", optimizer=args.optimizer,
                      lr=1e-6, eps=1e-3, dtype=args.dtype, device=args.device, bucket_positions=0,
                      offload_blocks=offload or None, train_size=64, dev_size=1, test_size=1, max_length=128,
                      batch_size=16, out="runs/offload_step_unused")
    return Session.build(cfg, log=lambda m: None)


def timed(s: Session, batch, steps: int) -> tuple[float, list[float]]:
    if s.device.type == "cuda":
        torch.cuda.synchronize(s.device)
    start = time.perf_counter()
    losses = [take_step(s, [batch]) for _ in range(steps)]
    if s.device.type == "cuda":
        torch.cuda.synchronize(s.device)
    return (time.perf_counter() - start) / steps, losses


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--optimizer", default="zo-sgd")
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--data-dir", default=os.environ.get("ZOFT_DATA_DIR"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=2, help="timed steps per session per round")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    memory, offloaded = session(args, False), session(args, True)
    with torch.no_grad():  # the same start (the sessions load the same checkpoint; make sure)
        for p, q in zip(memory.model.parameters(), offloaded.model.parameters()):
            q.copy_(p.to(q.device))
    batch = memory.batch(memory.splits.train[:16])
    off = offloaded.offload
    take_step(memory, [batch]), take_step(offloaded, [batch])  # warm-up (allocations, first pending update)
    times = {"memory": [], "offload": []}
    losses = {"memory": [], "offload": []}
    moved = []
    for r in range(args.rounds):
        for name, s in (("memory", memory), ("offload", offloaded)) if r % 2 == 0 else (("offload", offloaded), ("memory", memory)):
            before = off.bytes_moved
            t, ls = timed(s, batch, args.steps)
            times[name].append(t)
            losses[name] += ls
            if name == "offload":
                moved.append((off.bytes_moved - before) / args.steps)
        print(f"round {r + 1}/{args.rounds}: in-memory {times['memory'][-1]:.3f} s/step, "
              f"offloaded {times['offload'][-1]:.3f} s/step", flush=True)
    a, b = checkpoint.trainable_state(memory.model), offloaded.trainable_state()  # (flushes the pending updates)
    equal = losses["memory"] == losses["offload"] and all(torch.equal(a[n], b[n].to(a[n].device)) for n in a)
    blocks = [u for u in off.units if u.offloaded]
    block_bytes = max(sum(p.numel() * p.element_size() for _, _, p, _ in u.slots) for u in blocks)
    resident = sum(p.numel() * p.element_size() for u in off.units if not u.offloaded for _, _, p, _ in u.slots)
    seen = {id(p): p for p in memory.model.parameters()}
    model_bytes = sum(p.numel() * p.element_size() for p in seen.values())
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "model": args.model, "optimizer": args.optimizer, "dtype": args.dtype, "device": args.device,
        "batch": "16 SST-2 training examples, max_length 128, length buckets off",
        "rounds": args.rounds, "steps_per_round": args.steps,
        "s_per_step": {"in_memory": med["memory"], "offloaded": med["offload"]},
        "s_per_step_all": times,
        "throughput_fraction": med["memory"] / med["offload"],
        "bytes_moved_per_step": statistics.median(moved),
        "decoder_blocks": len(blocks), "block_bytes": block_bytes, "resident_bytes": resident,
        "most_blocks_on_device": off.most_on_device,
        "device_bytes_offloaded": resident + off.most_on_device * block_bytes,
        "model_bytes": model_bytes,
        "bitwise_equal_after_timed_steps": equal,
    }
    (out / "offload_step.json").write_text(json.dumps(result, indent=2) + "\n")
    with open(out / "offload_step.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["mode", "s_per_step_median", "device_bytes"])
        w.writerow(["in_memory", f"{med['memory']:.4f}", model_bytes])
        w.writerow(["offloaded", f"{med['offload']:.4f}", result["device_bytes_offloaded"]])
    plot(result, out / "offload_step.png")
    print(json.dumps({k: v for k, v in result.items() if k != "s_per_step_all"}, indent=2))


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    modes = ["in-memory", "offloaded"]
    ax1.bar(modes, [result["s_per_step"]["in_memory"], result["s_per_step"]["offloaded"]], color=["C0", "C1"])
    ax1.set_ylabel("s / ZO step (median)")
    ax1.set_title(f"{result['model']} full FT, {result['device']}")
    ax2.bar(modes, [result["model_bytes"] / 2**20, result["device_bytes_offloaded"] / 2**20], color=["C0", "C1"])
    ax2.set_ylabel("MiB on the compute device")
    ax2.set_title(f"{result['decoder_blocks']} blocks; {result['bytes_moved_per_step'] / 2**20:.0f} MiB moved/step")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
