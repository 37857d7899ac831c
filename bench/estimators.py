"""MSE of zoft's gradient estimators against the true gradient (seed 001, figure 4).

What it measures
    For every estimator x perturbation row (central / forward with gaussian, rademacher,
    sphere, dap; telescoping-p4 / -p3 with geometric and zipf term laws on the sphere), on
        f_reg(x) = x^T A^T A x                    (A: d x d, entries N(0, 1/d))
        f_cls(x) = mean_i log(1 + exp(-b_i a_i^T x))  (n = 2d points, a_i ~ N(0, I/d), b_i = +-1)
    at a fixed point x (fixed data seed), for several perturbation sizes eps (mu) and
    dimensions d, it draws ``--seeds`` independent estimates g_hat and reports
        rel_mse  = mean_s ||g_hat_s - grad f(x)||^2 / ||grad f(x)||^2   (+- its standard error)
        rel_bias = ||mean_s g_hat_s - grad f(x)||^2 / ||grad f(x)||^2   (includes rel_mse / seeds)
    The true gradient comes from torch.autograd.  Everything is float64 (parameters, data,
    noise), so that the tiny-mu terms of the telescoping estimators are meaningful -- but note
    that zoft converts every loss to a Python float through float32 (zoft.core.loss_value), so
    the finite differences only carry float32 resolution.  ``--loss-precision float64``
    re-runs everything with that cast bypassed (a benchmark-side patch of the name
    ``zoft.estimators.base.loss_value``; zoft itself is not modified), to show its effect.

Equal budget
    Each row gets the largest q whose MEAN number of function evaluations per estimate is
    <= ``--budget`` (default 8), measured on a probe run (the telescoping estimators use a
    random number of evaluations; DAP without momentum spends half of them on a pilot).
    The mean evaluations actually used in the measurement (est.forward_passes) are reported,
    with rel_mse * evals / budget, the MSE at an exactly equal budget if MSE ~ 1/q.

Outputs (in --out, default bench/results): estimators.json (config, machine, every figure),
estimators.csv, estimators.png (rel. MSE vs eps, log-log, one panel per function x d).

Run (full, ~4-5 minutes on 2 CPU cores):
    .venv/bin/python bench/estimators.py
Smoke test (< 30 s):
    .venv/bin/python bench/estimators.py --quick --out /tmp/zoft-bench
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import multiprocessing
import time
from pathlib import Path

import torch

import zoft
import zoft.estimators.base as estimator_base
from zoft.core import ParamSpace, derive_seed
from zoft.estimators import make_estimator

DTYPE = torch.float64
DATA_SEED = 1234
RUN_SEED = 2025
ZIPF_S = 2.0
FUNCTIONS = ("f_reg", "f_cls")

# (label, estimator name, options); q is chosen per row to meet the evaluation budget
ROWS = [
    *[(f"central-{p}", "central", dict(perturbation=p)) for p in ("gaussian", "rademacher", "sphere", "dap")],
    *[(f"forward-{p}", "forward", dict(perturbation=p)) for p in ("gaussian", "rademacher", "sphere", "dap")],
    *[(f"{v}-{law}-sphere", f"telescoping-{v}",
       dict(perturbation="sphere", telescoping_law=law, telescoping_param=0.5 if law == "geometric" else ZIPF_S))
      for v in ("p4", "p3") for law in ("geometric", "zipf")],
]

FULL = dict(dims=[10, 100, 1000], eps=[1e-8, 1e-6, 1e-4, 1e-3, 1e-2, 1e-1, 1.0], seeds=100)
QUICK = dict(dims=[10, 100], eps=[1e-6, 1e-3, 1.0], seeds=20)


# -- problems -----------------------------------------------------------------------------
def make_problem(kind: str, d: int):
    """(x, closure, true gradient) for f_reg or f_cls in dimension d, fixed data seed."""
    gen = torch.Generator().manual_seed(DATA_SEED + d)
    if kind == "f_reg":
        a = torch.randn(d, d, generator=gen, dtype=DTYPE) / math.sqrt(d)
        loss = lambda z: (a @ z).square().sum()  # x^T A^T A x
    else:
        feats = torch.randn(2 * d, d, generator=gen, dtype=DTYPE) / math.sqrt(d)
        labels = torch.randint(0, 2, (2 * d,), generator=gen).to(DTYPE) * 2 - 1
        loss = lambda z: torch.nn.functional.softplus(-labels * (feats @ z)).mean()
    x = torch.randn(d, generator=gen, dtype=DTYPE)
    z = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss(z), z)
    return x, (lambda: loss(x)), grad


# -- one estimate -------------------------------------------------------------------------
def dense_estimate(estimator, closure, space: ParamSpace, seed: int):
    """(dense g_hat, evaluations used); leaves the parameters restored."""
    est = estimator.estimate(closure, space, seed)
    for r, direction in est.pending:
        space.displace(direction, r)
    x = space.params[0]
    g = sum(t.coef * space.grad_factor(0) * t.direction.weight(0, x) * t.direction.materialize(0, x)
            for t in est.terms)
    return g, est.forward_passes


def choose_q(name: str, opts: dict, budget: int, probes: int = 200) -> int:
    """Largest q whose mean evaluations per estimate (over ``probes`` seeds) is <= budget."""
    x = torch.zeros(4, dtype=DTYPE)
    space, closure = ParamSpace([x], [1e-3]), lambda: x.square().sum()
    best = 1
    for q in range(1, budget + 1):
        est = make_estimator(name, q=q, **opts)
        used = []
        for s in range(probes):
            used.append(est.estimate(closure, space, derive_seed(7, s)).forward_passes)
            x.zero_()  # the probe's displacement is simply discarded
        mean = sum(used) / probes
        if mean > budget:
            break
        best = q
    return best


def measure(estimator, x, closure, grad, eps: float, seeds: int) -> dict:
    """Relative MSE (with standard error), relative squared bias and mean evaluations."""
    x0, space = x.clone(), ParamSpace([x], [eps])
    g2 = float(grad.square().sum())
    errs, total, evals, drift = [], torch.zeros_like(grad), 0, 0.0
    for s in range(seeds):
        g, n = dense_estimate(estimator, closure, space, derive_seed(RUN_SEED, s))
        drift = max(drift, float((x - x0).abs().max()))
        x.copy_(x0)
        errs.append(float((g - grad).square().sum()) / g2)
        total += g
        evals += n
    mse = sum(errs) / seeds
    var = sum((e - mse) ** 2 for e in errs) / max(seeds - 1, 1)
    return dict(rel_mse=mse, rel_mse_se=math.sqrt(var / seeds), rel_mse_median=sorted(errs)[seeds // 2],
                rel_bias2=float((total / seeds - grad).square().sum()) / g2,
                mean_evals=evals / seeds, max_restore_error=drift)


# -- the sweep ----------------------------------------------------------------------------
ZOFT_LOSS_VALUE = estimator_base.loss_value


def exact_loss_value(loss) -> float:
    """zoft.core.loss_value without its float32 cast (benchmark-side diagnostic only)."""
    return float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)


def run_task(task: tuple) -> list[dict]:
    """Every row x eps for one (loss precision, function, dimension)."""
    precision, kind, d, cfg = task
    torch.set_num_threads(1)
    estimator_base.loss_value = exact_loss_value if precision == "float64" else ZOFT_LOSS_VALUE
    x, closure, grad = make_problem(kind, d)
    results = []
    for label, name, opts in ROWS:
        est = make_estimator(name, q=cfg["q"][label], **opts)
        for eps in cfg["eps"]:
            t0 = time.perf_counter()
            row = measure(est, x, closure, grad, eps, cfg["seeds"])
            results.append(dict(loss_precision=precision, function=kind, dim=d, estimator=label,
                                q=cfg["q"][label], eps=eps, **row,
                                rel_mse_x_evals=row["rel_mse"] * row["mean_evals"] / cfg["budget"],
                                seconds=time.perf_counter() - t0))
    print(f"  loss precision {precision}, {kind}, d={d}: done", flush=True)
    return results


def sweep(cfg: dict, workers: int) -> list[dict]:
    tasks = [(p, kind, d, cfg) for p in cfg["loss_precisions"] for kind in FUNCTIONS for d in cfg["dims"]]
    tasks.sort(key=lambda t: -t[2])  # largest first: better balance across workers
    if workers <= 1:
        chunks = [run_task(t) for t in tasks]
    else:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            chunks = pool.map(run_task, tasks, chunksize=1)
    order = {t[:3]: i for i, t in enumerate(sorted(tasks, key=lambda t: (t[0] != "zoft", t[1], t[2])))}
    chunks = sorted(chunks, key=lambda c: order[(c[0]["loss_precision"], c[0]["function"], c[0]["dim"])])
    return [r for c in chunks for r in c]


# -- outputs ------------------------------------------------------------------------------
def machine_info() -> dict:
    return dict(platform=platform.platform(), python=platform.python_version(), torch=torch.__version__,
                zoft=zoft.__version__, cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads())


def write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def style(label: str) -> dict:
    colors = dict(gaussian="tab:blue", rademacher="tab:orange", sphere="tab:green", dap="tab:red")
    if label.startswith(("central", "forward")):
        kind, pert = label.split("-")
        return dict(color=colors[pert], ls="-" if kind == "central" else "--", marker="o" if kind == "central" else "s")
    tele = {"p4-geometric": "tab:purple", "p4-zipf": "tab:brown", "p3-geometric": "tab:pink", "p3-zipf": "tab:gray"}
    key = label.rsplit("-", 1)[0]
    return dict(color=tele[key], ls=":", marker="^" if key.startswith("p4") else "v")


def plot(path: Path, rows: list[dict], cfg: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(p, kind) for p in cfg["loss_precisions"] for kind in FUNCTIONS]
    dims = cfg["dims"]
    fig, axes = plt.subplots(len(panels), len(dims), figsize=(5 * len(dims), 4 * len(panels)), squeeze=False)
    for i, (precision, kind) in enumerate(panels):
        for k, d in enumerate(dims):
            ax = axes[i][k]
            for label, _, _ in ROWS:
                pts = select(rows, precision, kind, d, label)
                ax.loglog([r["eps"] for r in pts], [r["rel_mse"] for r in pts],
                          label=f"{label} (q={pts[0]['q']})", ms=4, lw=1.2, **style(label))
            ax.set_title(f"{kind}, d={d}, losses: {PRECISION_NAMES[precision]}", fontsize=10)
            ax.set_xlabel("eps (mu)")
            ax.set_ylabel("E||g_hat - grad||^2 / ||grad||^2")
            ax.grid(True, which="major", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=9)
    fig.suptitle(f"zoft estimators: relative MSE vs eps, float64 parameters, <= {cfg['budget']} evaluations "
                 f"per estimate (mean), {cfg['seeds']} seeds")
    fig.tight_layout(rect=(0, 0.05 if len(panels) > 2 else 0.1, 1, 0.98))
    fig.savefig(path, dpi=100)
    plt.close(fig)


PRECISION_NAMES = dict(zoft="zoft as shipped (float32 cast)", float64="float64 (cast bypassed)")


def select(rows, precision, kind, d, label) -> list[dict]:
    return [r for r in rows if (r["loss_precision"], r["function"], r["dim"], r["estimator"]) ==
            (precision, kind, d, label)]


def print_table(rows: list[dict], cfg: dict) -> None:
    eps = cfg["eps"]
    for precision in cfg["loss_precisions"]:
        for kind in FUNCTIONS:
            for d in cfg["dims"]:
                print(f"\n{kind}, d={d}, losses: {PRECISION_NAMES[precision]} -- relative MSE "
                      f"E||g_hat-grad||^2/||grad||^2 per eps (evals: mean evaluations per estimate)")
                print(f"{'estimator':<22}{'q':>3}{'evals':>7}" + "".join(f"{e:>10.0e}" for e in eps))
                for label, _, _ in ROWS:
                    pts = {r["eps"]: r for r in select(rows, precision, kind, d, label)}
                    first = pts[eps[0]]
                    print(f"{label:<22}{first['q']:>3}{first['mean_evals']:>7.2f}"
                          + "".join(f"{pts[e]['rel_mse']:>10.3g}" for e in eps))


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small smoke-test configuration (< 30 s)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"), help="output directory")
    ap.add_argument("--seeds", type=int, default=None, help="independent estimates per point")
    ap.add_argument("--budget", type=int, default=8, help="function evaluations per estimate")
    ap.add_argument("--loss-precision", choices=["zoft", "float64", "both"], default="both",
                    help="zoft: as shipped (losses cast through float32); float64: cast bypassed; both")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="processes")
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    precisions = ["zoft", "float64"] if args.loss_precision == "both" else [args.loss_precision]
    cfg = dict(QUICK if args.quick else FULL, budget=args.budget, loss_precisions=precisions,
               quick=args.quick, dtype=str(DTYPE), data_seed=DATA_SEED, run_seed=RUN_SEED, zipf_s=ZIPF_S,
               workers=args.workers)
    if args.seeds:
        cfg["seeds"] = args.seeds
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cfg["q"] = {label: choose_q(name, opts, cfg["budget"]) for label, name, opts in ROWS}
    print(f"q per row for a budget of {cfg['budget']} evaluations: {cfg['q']}", flush=True)
    rows = sweep(cfg, args.workers)
    wall = time.perf_counter() - t0
    print_table(rows, cfg)
    (out / "estimators.json").write_text(json.dumps(
        dict(config=cfg, machine=machine_info(), wall_seconds=wall,
             rows={label: dict(estimator=name, **opts) for label, name, opts in ROWS}, results=rows), indent=1))
    write_csv(out / "estimators.csv", rows)
    plot(out / "estimators.png", rows, cfg)
    print(f"\nwrote {out}/estimators.json, .csv, .png; wall time {wall:.1f} s")


if __name__ == "__main__":
    main()
