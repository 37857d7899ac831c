"""Block streaming for full ZO fine-tuning (ZO2's design), on paper: accelerator bytes resident
and host <-> accelerator bytes moved per step, for OPT shapes, beside ZO2's published memory.

ZO2 (Wang et al., "ZO2: Scalable Zeroth-Order Fine-Tuning for Extremely Large Language Models
with Limited GPU Memory", COLM 2025) keeps every decoder block in (pinned) CPU memory and the
embedding, positions and LM head on the GPU; a step uploads each block once, runs the +eps
and -eps forwards of the two-point estimate through it back to back (two hidden states travel
together), applies the previous step's update and this step's perturbation and restore to the
resident copy from the seed, and offloads it, while the next block uploads and the previous one
offloads on other CUDA streams. So the GPU holds the resident tensors plus ``slots`` blocks
(computing, uploading, offloading: 3), and each block crosses the bus twice per step.

Model here, weights in 16-bit (2 bytes per parameter):
  block parameters  = 12 h^2 + 13 h   (q, k, v, out: 4 h^2 + 4 h; fc1, fc2: 8 h^2 + 5 h; 2 layer norms: 4 h)
  resident weights  = (V + P) h + 2 h (tied embedding and head, learned positions, final norm)
  GPU weights       = resident + slots x block
  activations       = two hidden states of B x T x h, the attention scores of one block for both
                      (2 x B x heads x T^2) and the LM head's logits at the scored positions
                      (B x V, in fp32), for the batch and length given (ZO2 does not state the
                      shape behind its table, so the activation term is reported apart)
  moved per step    = 2 x layers x block x 2 bytes (one upload and one offload of every block)
No GPU was lent for this work: these are arithmetic, not measurements; ZO2's column is its
README's table (GB, measured on its hardware).

    python bench/streaming_memory_model.py --out docs/results/streaming_memory_model
Writes OUT/streaming_memory_model.{json,csv,png}.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

# facebook/opt-*: hidden, layers, heads (ffn = 4 h); vocabulary 50272, 2048 + 2 positions
OPT = {"1.3b": (2048, 24, 32), "2.7b": (2560, 32, 32), "6.7b": (4096, 32, 32), "13b": (5120, 40, 40),
       "30b": (7168, 48, 56), "66b": (9216, 64, 72), "175b": (12288, 96, 96)}
ZO2_PUBLISHED_GB = {"1.3b": 3.75, "2.7b": 4.14, "6.7b": 4.99, "13b": 6.18, "30b": 8.86, "66b": 12.07, "175b": 18.04}
VOCAB, POSITIONS, BYTES = 50272, 2050, 2


def row(size: str, slots: int, batch: int, length: int) -> dict:
    h, layers, heads = OPT[size]
    block = 12 * h * h + 13 * h
    resident = (VOCAB + POSITIONS) * h + 2 * h
    total = resident + layers * block
    activations = 2 * batch * length * h * BYTES + 2 * batch * heads * length * length * BYTES + batch * VOCAB * 4
    gpu_weights = (resident + slots * block) * BYTES
    return {"model": f"opt-{size}", "parameters_b": round(total / 1e9, 2), "block_mib": round(block * BYTES / 2**20, 1),
            "in_memory_weights_gb": round(total * BYTES / 1e9, 2), "streamed_gpu_weights_gb": round(gpu_weights / 1e9, 2),
            "activations_gb": round(activations / 1e9, 2),
            "streamed_gpu_total_gb": round((gpu_weights + activations) / 1e9, 2),
            "zo2_published_gb": ZO2_PUBLISHED_GB[size], "host_weights_gb": round(layers * block * BYTES / 1e9, 2),
            "moved_per_step_gb": round(2 * layers * block * BYTES / 1e9, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--slots", type=int, default=3, help="blocks resident at once (computing, uploading, offloading)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--length", type=int, default=512)
    p.add_argument("--out", default="bench/results/streaming_memory_model")
    args = p.parse_args()
    rows = [row(size, args.slots, args.batch, args.length) for size in OPT]
    for r in rows:
        print(r)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "streaming_memory_model.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2) + "\n")
    with open(out / "streaming_memory_model.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    x = [r["parameters_b"] for r in rows]
    ax.loglog(x, [r["in_memory_weights_gb"] for r in rows], "o-", label="all weights, 16-bit (in memory)")
    ax.loglog(x, [r["streamed_gpu_total_gb"] for r in rows], "s-", label=f"streamed: {args.slots} blocks + resident + activations")
    ax.loglog(x, [r["zo2_published_gb"] for r in rows], "^--", label="ZO2 published (measured)")
    ax.set_xlabel("parameters (billions)")
    ax.set_ylabel("accelerator memory (GB)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "streaming_memory_model.png", dpi=120)
    print(f"wrote {out}/streaming_memory_model.{{json,csv,png}}")


if __name__ == "__main__":
    main()
