"""Per-step overhead of zo-finetuner over zo-sgd: the block statistics and the PertNN pass.

On randomly initialised Llama-architecture models (no download) and one fixed batch of
random tokens (LM loss), zo-sgd and zo-finetuner steps are timed interleaved, one of each
per round, so that a change of machine load hits both alike; the step times are medians.
Both optimizers draw the same directions (same seed), so the difference is what
zo-finetuner adds: per tensor one var_mean, the features, the B PertNNs (one batched pass)
and the normalisation, plus one extra forward pass on the very first step only (f(theta_0)).
``scales`` times that addition alone (FineTuner.scales on the current parameters).

Memory: zo-finetuner's optimizer state is B + 2 floats; the FineTuner holds
B * (5h + h + h + 1) weights; one pass of the networks allocates the stacked weights again
plus B * h activations (h = 64); the statistics are reductions (no tensor-sized temporary
for fp32 tensors, one float32 copy of a tensor at a time for fp16/bf16).

    python bench/finetuner_overhead.py                   # CPU, writes bench/results/finetuner_overhead.json
    python bench/finetuner_overhead.py --device cuda --out /tmp/res
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import transformers

import zoft
from zoft.learned import FEATURES, FineTuner, block_layout
from zoft.train.metering import synchronize

# name -> Llama config: "moderate" has few big tensors (39 blocks, 4.0M parameters);
# "many-blocks" has LLaMA-3.2-1B's count of tensors (147 blocks) at a small width.
CONFIGS = {
    "moderate": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
                     num_key_value_heads=2, vocab_size=2048),
    "many-blocks": dict(hidden_size=64, intermediate_size=172, num_hidden_layers=16, num_attention_heads=4,
                        num_key_value_heads=2, vocab_size=2048),
}
BATCH, SEQ = 8, 64


def build(config: dict, device: torch.device) -> tuple[torch.nn.Module, torch.Tensor]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**config)).to(device).eval()
    ids = torch.randint(0, config["vocab_size"], (BATCH, SEQ), generator=torch.Generator().manual_seed(0))
    return model, ids.to(device)


def timed(fn, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def measure(name: str, config: dict, rounds: int, device: torch.device) -> dict:
    model, ids = build(config, device)
    closure = lambda: model(input_ids=ids, labels=ids).loss
    params = [p for p in model.parameters() if p.requires_grad]
    finetuner = FineTuner(block_layout(model.named_parameters()), f"random-llama-{name}")
    hp = dict(lr=1e-4, eps=1e-3, seed=0)
    sgd = zoft.make_optimizer("zo-sgd", params, **hp)
    learned = zoft.make_optimizer("zo-finetuner", params, finetuner=finetuner, **hp)
    with torch.no_grad():
        forward = statistics.median(timed(closure, device) for _ in range(3))
    first = timed(lambda: learned.step(closure), device)  # includes f(theta_0), once
    sgd.step(closure)
    t_sgd, t_learned, t_scales = [], [], []
    prev = torch.ones(len(finetuner.layout), dtype=torch.float64)
    for _ in range(rounds):
        t_sgd.append(timed(lambda: sgd.step(closure), device))
        t_learned.append(timed(lambda: learned.step(closure), device))
        with torch.no_grad():
            t_scales.append(timed(lambda: finetuner.scales(params, (1.0, 1.0), prev), device))
    n_blocks, hidden = len(finetuner.layout), finetuner.config.hidden
    weights = n_blocks * (len(FEATURES) * hidden + 2 * hidden + 1)
    row = dict(
        config=name, parameters=sum(p.numel() for p in params), blocks=n_blocks,
        forward_ms=1e3 * forward,
        zo_sgd_step_ms=1e3 * statistics.median(t_sgd),
        zo_finetuner_step_ms=1e3 * statistics.median(t_learned),
        scales_ms=1e3 * statistics.median(t_scales),
        first_step_ms=1e3 * first,
        finetuner_bytes=4 * weights,
        pertnn_pass_bytes=4 * (weights + n_blocks * hidden),
        optimizer_state_floats=n_blocks + 2,
        optimizer_state_tensors=sum(isinstance(v, torch.Tensor)
                                    for s in learned.state.values() for v in s.values()),
    )
    row["ratio"] = row["zo_finetuner_step_ms"] / row["zo_sgd_step_ms"]
    row["scales_fraction_of_zo_sgd_step"] = row["scales_ms"] / row["zo_sgd_step_ms"]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadier timings)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = []
    for name, config in CONFIGS.items():
        rows.append(measure(name, config, args.rounds, device))
        r = rows[-1]
        print(f"{name:12s} {r['parameters'] / 1e6:5.2f}M params {r['blocks']:4d} blocks | zo-sgd "
              f"{r['zo_sgd_step_ms']:8.2f} ms  zo-finetuner {r['zo_finetuner_step_ms']:8.2f} ms  "
              f"ratio {r['ratio']:.3f} | stats+PertNN {r['scales_ms']:.2f} ms "
              f"({100 * r['scales_fraction_of_zo_sgd_step']:.1f}% of a zo-sgd step)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = dict(device=str(device), torch=torch.__version__, threads=torch.get_num_threads(),
                machine=platform.processor() or platform.machine(), batch=[BATCH, SEQ], rounds=args.rounds)
    if device.type == "cuda":
        meta["gpu"] = torch.cuda.get_device_name(device)
    (out / "finetuner_overhead.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out / 'finetuner_overhead.json'}")


if __name__ == "__main__":
    main()
