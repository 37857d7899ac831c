"""Does bf16 compute hurt the ZO estimate? The two-point finite difference against the exact
directional derivative, per precision and perturbation size, on SmolLM2-135M.

At one point x (the pretrained model; LoRA at its initialisation) and one fixed SST-2 batch of
real examples, the true gradient g is computed once by backprop in fp32. For K Gaussian
directions u_k (the same directions in every cell) the exact directional derivative is
d_k = <u_k, g>, and each precision gives the estimate

    e_k = (f(x + eps u_k) - f(x - eps u_k)) / (2 eps)

with the loss f computed in fp32 from the model's logits in every mode (as zoft trains):

  fp32      fp32 weights
  bf16      bf16 weights: the perturbed point x +- eps u is itself rounded to bf16 (full), or
            the bf16 frozen base under fp32 LoRA adapters (LoRA: the point is exact)
  amp-bf16  fp32 weights (the point exact), matmuls under bf16 autocast (auto's full fine-tuning)

Reported per (scheme, precision, eps): the relative error rms(e - d) / rms(d) (the noise that
the finite difference and the rounding add, relative to the signal; fp32 has its own, from the
curvature and fp32 rounding), the correlation of e with d over the directions, var(e) against
var(d), and the cosine with g of the K-direction ZO estimate mean_k e_k u_k beside that of the
exact-derivative estimate mean_k d_k u_k with the same directions (with K directions in
millions of dimensions both are small: what matters is that e's is not below d's).
"bf16 breaks" below an eps is read as its relative error exceeding --break-at (0.5: the added
noise half the signal, where it starts to cost more queries than the precision saves).

    python bench/bf16_estimate.py --data-dir ../shared/datasets       # ~15 min on 2 cores
Writes OUT/NAME.{json,csv,png} (default bench/results/bf16_estimate).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
from pathlib import Path

import torch

from zoft.peft import SCHEMES
from zoft.train.config import TrainConfig
from zoft.train.data import micro_batch
from zoft.train.objective import Objective
from zoft.train.session import Session

EPS_GRID = {"full": [1e-4, 3e-4, 1e-3, 3e-3, 1e-2], "lora": [1e-3, 3e-3, 1e-2, 3e-2, 1e-1]}


def build(model: str, peft: str, dtype: str, data_dir: str | None) -> Session:
    cfg = TrainConfig(model=model, task="sst2", data_dir=data_dir, peft=peft, dtype=dtype, optimizer="zo-sgd",
                      train_size=64, dev_size=1, test_size=1, batch_size=16)
    return Session.build(cfg, log=lambda m: None)


def trainable(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def direction(k: int, t: int, shape: torch.Size) -> torch.Tensor:
    """Slice t (one trainable tensor) of Gaussian direction k, the same in every cell."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(100_003 * k + t), dtype=torch.float32)


def gram(shapes: list[torch.Size], count: int) -> torch.Tensor:
    """(count, count) matrix of <u_j, u_k>, tensor by tensor (one tensor's slices held at a time)."""
    g = torch.zeros(count, count, dtype=torch.float64)
    for t, shape in enumerate(shapes):
        slices = torch.stack([direction(k, t, shape).flatten() for k in range(count)]).double()
        g += slices @ slices.T
    return g


def estimate_cosine(weights: list[float], exact: list[float], g: torch.Tensor, grad_norm: float) -> float:
    """cos(sum_k w_k u_k, grad) from scalars: <u_k, grad> = exact[k], |sum w_k u_k|^2 = w^T G w."""
    w, d = torch.tensor(weights, dtype=torch.float64), torch.tensor(exact, dtype=torch.float64)
    return float((w @ d) / (torch.sqrt(w @ g @ w) * grad_norm))


def measure_scheme(args, scheme: str) -> list[dict]:
    ref = build(args.model, scheme, "fp32", args.data_dir)
    low = build(args.model, scheme, "bf16", args.data_dir)
    batch = ref.batch(micro_batch(ref.splits.train, 0, args.batch_size, 0))
    amp = Objective(ref.model, offset=ref.objective.offset, autocast=torch.bfloat16)
    # the same trainable values in both models (LoRA's random A; full: bf16 rounds them)
    params_ref, params_low = trainable(ref.model), trainable(low.model)
    with torch.no_grad():
        for (_, p), (_, q) in zip(params_ref, params_low):
            q.copy_(p)
    ref.model.zero_grad(set_to_none=True)
    ref.objective.loss(batch).backward()
    grad = [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for _, p in params_ref]
    ref.model.zero_grad(set_to_none=True)
    cells = {"fp32": (ref.objective, params_ref), "bf16": (low.objective, params_low),
             "amp-bf16": (amp, params_ref)}
    origin = {name: [p.detach().clone() for _, p in params] for name, (_, params) in cells.items()}
    eps_grid = EPS_GRID[scheme]
    est = {(c, e): [] for c in cells for e in eps_grid}
    exact = []
    with torch.no_grad():
        for k in range(args.directions):
            u = [direction(k, t, p.shape) for t, (_, p) in enumerate(params_ref)]
            d = sum(float((ui.double() * gi.double()).sum()) for ui, gi in zip(u, grad))
            exact.append(d)
            for name, (objective, params) in cells.items():
                for eps in eps_grid:
                    losses = []
                    for sign in (1.0, -1.0):
                        for (_, p), o, ui in zip(params, origin[name], u):
                            p.copy_(o).add_(ui.to(p.dtype) if p.dtype != torch.float32 else ui, alpha=sign * eps)
                        losses.append(float(objective.loss(batch)))
                    e = (losses[0] - losses[1]) / (2 * eps)
                    est[(name, eps)].append(e)
                for (_, p), o in zip(params, origin[name]):
                    p.copy_(o)
            print(f"  {scheme} direction {k + 1}/{args.directions}: d={d:+.4f} "
                  + " ".join(f"{c}@{e:g}={est[(c, e)][-1]:+.4f}" for c in cells for e in (SCHEMES.get(scheme).default_eps,)),
                  flush=True)
    del u
    rms_d = math.sqrt(statistics.fmean(x * x for x in exact))
    g_uu = gram([p.shape for _, p in params_ref], args.directions)
    grad_norm = math.sqrt(sum(float(g.double().pow(2).sum()) for g in grad))
    cos_exact = estimate_cosine(exact, exact, g_uu, grad_norm)
    rows = []
    for (name, eps), es in est.items():
        err = math.sqrt(statistics.fmean((e - d) ** 2 for e, d in zip(es, exact)))
        rows.append({"scheme": scheme, "precision": name, "eps": eps, "directions": args.directions,
                     "relative_error": round(err / rms_d, 4),
                     "correlation": round(statistics.correlation(es, exact), 4) if len(es) > 2 else None,
                     "var_estimate": statistics.pvariance(es), "var_exact": statistics.pvariance(exact),
                     "cosine_with_gradient": round(estimate_cosine(es, exact, g_uu, grad_norm), 5),
                     "cosine_exact_same_directions": round(cos_exact, 5), "grad_norm": grad_norm,
                     "trainable_params": sum(p.numel() for _, p in params_ref)})
    return rows


def breaking_eps(rows: list[dict], threshold: float) -> dict:
    """Per scheme and precision: the eps of the grid whose relative error is within
    ``threshold`` (the error is U-shaped in eps: rounding below, curvature above), the eps of
    the smallest error, and the largest eps below the good range, where the precision breaks."""
    out = {}
    for scheme in dict.fromkeys(r["scheme"] for r in rows):
        for precision in dict.fromkeys(r["precision"] for r in rows):
            cells = sorted((r for r in rows if r["scheme"] == scheme and r["precision"] == precision),
                           key=lambda r: r["eps"])
            if not cells:
                continue
            good = [r["eps"] for r in cells if r["relative_error"] <= threshold]
            best = min(cells, key=lambda r: r["relative_error"])
            below = [r["eps"] for r in cells if good and r["eps"] < min(good)]
            out[f"{scheme}/{precision}"] = {"good_eps": good, "best_eps": best["eps"],
                                            "best_relative_error": best["relative_error"],
                                            "breaks_at_or_below": max(below) if below else None}
    return out


def plot(rows: list[dict], path: Path, threshold: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    schemes = list(dict.fromkeys(r["scheme"] for r in rows))
    fig, axes = plt.subplots(1, len(schemes), figsize=(6 * len(schemes), 4.2), squeeze=False)
    for ax, scheme in zip(axes[0], schemes):
        for precision in dict.fromkeys(r["precision"] for r in rows if r["scheme"] == scheme):
            pts = sorted((r["eps"], r["relative_error"]) for r in rows
                         if r["scheme"] == scheme and r["precision"] == precision)
            ax.plot(*zip(*pts), marker="o", label=precision)
        ax.axhline(threshold, color="black", linestyle="--", linewidth=1, label=f"break at {threshold}")
        ax.axvline(SCHEMES.get(scheme).default_eps, color="grey", linestyle=":", linewidth=1, label="MeZO's eps")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("eps")
        ax.set_ylabel("rms(estimate - exact) / rms(exact)")
        ax.set_title(f"{scheme}: two-point estimate vs exact directional derivative")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--data-dir", default=os.environ.get("ZOFT_DATA_DIR"))
    ap.add_argument("--schemes", nargs="+", default=["lora", "full"], choices=list(EPS_GRID))
    ap.add_argument("--directions", type=int, default=24)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--break-at", type=float, default=0.5)
    ap.add_argument("--name", default="bf16_estimate")
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()
    if not args.data_dir:
        raise SystemExit("bf16_estimate: needs the official SST-2 files (--data-dir or $ZOFT_DATA_DIR)")
    rows = [r for scheme in args.schemes for r in measure_scheme(args, scheme)]
    result = {"model": args.model, "task": "sst2", "batch_size": args.batch_size, "directions": args.directions,
              "break_at": args.break_at, "rows": rows, "breaks": breaking_eps(rows, args.break_at)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    with open(out / f"{args.name}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, out / f"{args.name}.png", args.break_at)
    for r in rows:
        print(json.dumps(r))
    print(json.dumps(result["breaks"], indent=1))
    print(f"wrote {out / args.name}.{{json,csv,png}}")


if __name__ == "__main__":
    main()
