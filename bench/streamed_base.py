"""ZO LoRA on a frozen base larger than this machine's memory, streamed from disk (--stream-base).

For each size: writes a ``random-opt-SIZE`` checkpoint (facebook/opt shapes, seeded random
bf16 weights, the byte tokenizer) to --folder as one safetensors file per decoder block, never
holding the model in memory; then, each in its own process (``zoft train``, so each has its own
peak RSS):

  zo-stream   ZO-SGD LoRA, --stream-base: every forward reads the decoder blocks from disk
  zo-memory   ZO-SGD LoRA with the model in memory (the same folder, without --stream-base)
  fo-memory   FO-Adam LoRA with the model in memory

under an address-space limit of --limit-gib (prlimit), so a run that cannot fit fails with an
allocation error instead of waking the kernel's OOM killer. Reported: status (and the error
line), peak RSS, s/step (mean over the steps after the first), and the bytes read from the
checkpoint per step (decoder-block bytes x training forward passes per step; the tests check
that a streamed forward reads exactly the block bytes once).

    python bench/streamed_base.py --sizes 1.3b 13b --folder /tmp/zoft-streamed --out docs/results/streamed_base
Writes OUT/streamed_base.{json,csv,png}. The checkpoints are left in --folder (26 GB for 13b;
--cleanup deletes them).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from zoft.models import OPT_SHAPES, _random_opt_config, byte_tokenizer


def write_checkpoint(size: str, folder: Path, seed: int = 0) -> int:
    """The random-opt-SIZE checkpoint, block by block; returns the decoder-block bytes."""
    from accelerate import init_empty_weights
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    if (folder / "done.json").is_file():
        return json.loads((folder / "done.json").read_text())["block_bytes"]
    folder.mkdir(parents=True, exist_ok=True)
    config = _random_opt_config(size)
    config.torch_dtype = "bfloat16"
    with init_empty_weights():
        skeleton = AutoModelForCausalLM.from_config(config)
    shards: dict[str, dict[str, torch.Tensor]] = {}
    for name, p in skeleton.named_parameters():  # tied head: the embedding is stored once
        layer = name.split(".layers.")[1].split(".")[0] if ".layers." in name else "resident"
        shards.setdefault(layer, {})[name] = p
    gen = torch.Generator().manual_seed(seed)
    block_bytes, index = 0, {}
    for shard, params in shards.items():
        tensors = {}
        for name, p in params.items():
            if name.endswith("bias"):
                tensors[name] = torch.zeros(p.shape, dtype=torch.bfloat16)
            elif p.ndim == 1:  # layer-norm weights
                tensors[name] = torch.ones(p.shape, dtype=torch.bfloat16)
            else:
                tensors[name] = (torch.randn(p.shape, generator=gen) * 0.02).to(torch.bfloat16)
        file = f"model-{shard}.safetensors"
        save_file(tensors, str(folder / file), metadata={"format": "pt"})
        index.update({name: file for name in tensors})
        if shard != "resident":
            block_bytes += sum(t.numel() * 2 for t in tensors.values())
        print(f"  wrote {file}", flush=True)
        del tensors
    total = sum((folder / f).stat().st_size for f in set(index.values()))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                    "weight_map": index}))
    config.save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    (folder / "done.json").write_text(json.dumps({"block_bytes": block_bytes}))
    return block_bytes


def run(mode: str, model: str, out: Path, args) -> dict:
    optimizer = "fo-adam" if mode.startswith("fo") else "zo-sgd"
    cmd = ["prlimit", f"--as={args.limit_gib * 2**30}", sys.executable, "-m", "zoft", "train", "--model", model,
           "--task", "sst2", "--peft", "lora", "--optimizer", optimizer, "--lr", "1e-4", "--dtype", "bf16",
           "--device", "cpu", "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--max-length",
           str(args.max_length), "--train-size", "64", "--dev-size", "0", "--test-size", "0", "--save-every",
           str(args.steps), "--out", str(out)]
    cmd += ["--stream-base"] if mode == "zo-stream" else []
    cmd += ["--data-dir", args.data_dir] if args.data_dir else []
    print(" ".join(cmd), flush=True)
    start = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    row = {"mode": mode, "optimizer": optimizer, "returncode": proc.returncode, "wall_s": round(time.time() - start, 1)}
    lines = [l for l in proc.stderr.splitlines() if l.strip() and "Warning" not in l and "warn" not in l]
    if proc.returncode != 0:
        errors = [l for l in lines if "rror" in l or "memory" in l.lower()]
        row["error"] = (errors or lines or ["(no output)"])[-1][:300]
        return row
    metrics = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in metrics if "wall_time_s" in m]
    row["s_per_step"] = round((steps[-1]["wall_time_s"] - steps[0]["wall_time_s"]) / max(1, len(steps) - 1), 2)
    row["peak_rss_gib"] = round(steps[-1]["peak_memory_bytes"] / 2**30, 2)
    row["forwards_per_step"] = steps[-1]["forward_passes"] / steps[-1]["step"] if optimizer == "zo-sgd" else None
    row["losses"] = [round(m["loss"], 4) for m in steps]
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", default=["1.3b", "13b"], choices=list(OPT_SHAPES))
    p.add_argument("--modes", nargs="+", default=["zo-stream", "zo-memory", "fo-memory"])
    p.add_argument("--folder", default="/tmp/zoft-streamed")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--max-length", type=int, default=32)
    p.add_argument("--limit-gib", type=int, default=20, help="address-space limit of each training process")
    p.add_argument("--data-dir", default=os.environ.get("ZOFT_DATA_DIR"))
    p.add_argument("--out", default="bench/results/streamed_base")
    p.add_argument("--cleanup", action="store_true")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in args.sizes:
        folder = Path(args.folder) / f"random-opt-{size}"
        start = time.time()
        block_bytes = write_checkpoint(size, folder)
        print(f"random-opt-{size}: checkpoint in {time.time() - start:.0f} s, decoder blocks {block_bytes / 2**30:.2f} GiB", flush=True)
        for mode in args.modes:
            row = {"model": f"random-opt-{size}", "block_gib": round(block_bytes / 2**30, 2),
                   **run(mode, str(folder), Path(args.folder) / "runs" / f"{size}-{mode}", args)}
            if row.get("forwards_per_step") and mode == "zo-stream":
                row["read_per_step_gib"] = round(row["forwards_per_step"] * block_bytes / 2**30, 2)
            print(row, flush=True)
            rows.append(row)
            (out / "streamed_base.json").write_text(json.dumps({"command": " ".join(sys.argv), "args": vars(args),
                                                                "threads": torch.get_num_threads(), "rows": rows}, indent=2) + "\n")
        if args.cleanup:
            shutil.rmtree(folder)
    keys = ["model", "mode", "optimizer", "returncode", "peak_rss_gib", "s_per_step", "read_per_step_gib", "block_gib",
            "wall_s", "error"]
    with open(out / "streamed_base.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.8))
    labels = [f"{r['model'].removeprefix('random-opt-')}\n{r['mode']}" for r in rows]
    ax.bar(labels, [r.get("peak_rss_gib") or 0 for r in rows], color=["C0" if r["returncode"] == 0 else "C3" for r in rows])
    for i, r in enumerate(rows):
        if r["returncode"] != 0:
            ax.text(i, 0.2, "failed", ha="center", rotation=90, color="C3")
    ax.set_ylabel("peak RSS (GiB)")
    fig.tight_layout()
    fig.savefig(out / "streamed_base.png", dpi=120)
    print(f"wrote {out}/streamed_base.{{json,csv,png}}")


if __name__ == "__main__":
    main()
