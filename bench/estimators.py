"""MSE of zoft's gradient estimators against the true gradient (Ma, UMD 2025, figure 4).

What it measures
    For every estimator x perturbation row (central / forward with gaussian, rademacher,
    sphere, dap; telescoping-p4 / -p3 with geometric and zipf term laws on the sphere, with
    zoft's default series length ``telescoping_terms`` = 8; plus p4-geometric-30terms, the
    same p4 geometric(0.5) estimator with the series capped at 30 terms instead, to show what
    the cap buys), on
        f_reg(x) = x^T A^T A x                    (A: d x d, entries N(0, 1/d))
        f_cls(x) = mean_i log(1 + exp(-b_i a_i^T x))  (n = 2d points, a_i ~ N(0, I/d), b_i = +-1)
    at a fixed point x (fixed data seed), for several perturbation sizes eps (mu) and
    dimensions d, it draws ``--seeds`` independent estimates g_hat and reports
        rel_mse  = mean_s ||g_hat_s - grad f(x)||^2 / ||grad f(x)||^2   (+- its standard error)
        rel_bias2 = ||mean_s g_hat_s - grad f(x)||^2 / ||grad f(x)||^2   (includes rel_mse / seeds)
    zoft is measured as shipped (nothing is patched).  ``--dtype`` sets the dtype of the
    parameters, data, perturbations and hence losses: in float64 zoft keeps the float64 loss
    end to end (zoft.core.loss_value returns it exactly), so the tiny-mu terms of the
    telescoping estimators are meaningful; float32 shows the same estimators at float32
    resolution, where the smallest eps are below rounding.  The data and x are drawn in
    float64 and rounded to the dtype; the true gradient is the float64 torch.autograd
    gradient of that (rounded) problem.  A full run does both dtypes (one row per dtype in
    the outputs), --quick only float64 unless --dtype says otherwise.

Equal budget
    Each row gets the largest q whose MEAN number of function evaluations per estimate is
    <= ``--budget`` (default 8), measured on a probe run (the telescoping estimators use a
    random number of evaluations; DAP without momentum spends half of them on a pilot).
    The mean evaluations actually used in the measurement (est.forward_passes) are reported,
    with rel_mse * evals / budget, the MSE at an exactly equal budget if MSE ~ 1/q.

Outputs (in --out, default bench/results): estimators.json (config, machine, every figure),
estimators.csv (one line per dtype x function x d x row x eps), estimators.png (rel. MSE vs
eps, log-log, one panel per dtype x function x d).

Run (full, float64 and float32, ~4-5 minutes on 2 CPU cores):
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
import multiprocessing
import platform
import time
from pathlib import Path

import torch

import zoft
from zoft.core import ParamSpace, derive_seed
from zoft.estimators import make_estimator

PROBE_DTYPE = torch.float64  # choose_q's probe (the evaluation count does not depend on the dtype)
DTYPES = dict(float64=torch.float64, float32=torch.float32)
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
    # the pre-cap series length, to show what capping at telescoping_terms (default 8) buys
    ("p4-geometric-30terms", "telescoping-p4",
     dict(perturbation="sphere", telescoping_law="geometric", telescoping_param=0.5, telescoping_terms=30)),
]

FULL = dict(dims=[10, 100, 1000], eps=[1e-8, 1e-6, 1e-4, 1e-3, 1e-2, 1e-1, 1.0], seeds=100)
QUICK = dict(dims=[10, 100], eps=[1e-6, 1e-3, 1.0], seeds=20)


# -- problems -----------------------------------------------------------------------------
def make_problem(kind: str, d: int, dtype: torch.dtype):
    """(x, closure, true gradient) for f_reg or f_cls in dimension d, fixed data seed.

    The data and x are drawn in float64 and rounded to ``dtype``; x, the data and the closure
    are in ``dtype``, and the true gradient is the float64 autograd gradient of that rounded
    problem (so for float32 it is not polluted by float32 arithmetic)."""
    gen = torch.Generator().manual_seed(DATA_SEED + d)
    if kind == "f_reg":
        a = (torch.randn(d, d, generator=gen, dtype=torch.float64) / math.sqrt(d)).to(dtype)
        loss = lambda z, a=a: (a.to(z.dtype) @ z).square().sum()  # x^T A^T A x
    else:
        feats = (torch.randn(2 * d, d, generator=gen, dtype=torch.float64) / math.sqrt(d)).to(dtype)
        labels = torch.randint(0, 2, (2 * d,), generator=gen).to(dtype) * 2 - 1
        loss = lambda z: torch.nn.functional.softplus(-labels.to(z.dtype) * (feats.to(z.dtype) @ z)).mean()
    x = torch.randn(d, generator=gen, dtype=torch.float64).to(dtype)
    z = x.to(torch.float64, copy=True).requires_grad_(True)
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
    x = torch.zeros(4, dtype=PROBE_DTYPE)
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
        g = g.to(grad.dtype)
        errs.append(float((g - grad).square().sum()) / g2)
        total += g
        evals += n
    mse = sum(errs) / seeds
    var = sum((e - mse) ** 2 for e in errs) / max(seeds - 1, 1)
    return dict(rel_mse=mse, rel_mse_se=math.sqrt(var / seeds), rel_mse_median=sorted(errs)[seeds // 2],
                rel_bias2=float((total / seeds - grad).square().sum()) / g2,
                mean_evals=evals / seeds, max_restore_error=drift)


# -- the sweep ----------------------------------------------------------------------------
def run_task(task: tuple) -> list[dict]:
    """Every row x eps for one (dtype, function, dimension)."""
    dtype, kind, d, cfg = task
    torch.set_num_threads(1)
    x, closure, grad = make_problem(kind, d, DTYPES[dtype])
    results = []
    for label, name, opts in ROWS:
        est = make_estimator(name, q=cfg["q"][label], **opts)
        for eps in cfg["eps"]:
            t0 = time.perf_counter()
            row = measure(est, x, closure, grad, eps, cfg["seeds"])
            results.append(dict(dtype=dtype, function=kind, dim=d, estimator=label,
                                q=cfg["q"][label], eps=eps, **row,
                                rel_mse_x_evals=row["rel_mse"] * row["mean_evals"] / cfg["budget"],
                                seconds=time.perf_counter() - t0))
    print(f"  {dtype}, {kind}, d={d}: done", flush=True)
    return results


def sweep(cfg: dict, workers: int) -> list[dict]:
    tasks = [(t, kind, d, cfg) for t in cfg["dtypes"] for kind in FUNCTIONS for d in cfg["dims"]]
    tasks.sort(key=lambda t: -t[2])  # largest first: better balance across workers
    if workers <= 1:
        chunks = [run_task(t) for t in tasks]
    else:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            chunks = pool.map(run_task, tasks, chunksize=1)
    order = {t[:3]: i for i, t in enumerate(sorted(tasks, key=lambda t: (cfg["dtypes"].index(t[0]), t[1], t[2])))}
    chunks = sorted(chunks, key=lambda c: order[(c[0]["dtype"], c[0]["function"], c[0]["dim"])])
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
    if label == "p4-geometric-30terms":
        return dict(color="black", ls="-.", marker="x")
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

    panels = [(t, kind) for t in cfg["dtypes"] for kind in FUNCTIONS]
    dims = cfg["dims"]
    fig, axes = plt.subplots(len(panels), len(dims), figsize=(5 * len(dims), 4 * len(panels)), squeeze=False)
    for i, (dtype, kind) in enumerate(panels):
        for k, d in enumerate(dims):
            ax = axes[i][k]
            for label, _, _ in ROWS:
                pts = select(rows, dtype, kind, d, label)
                ax.loglog([r["eps"] for r in pts], [r["rel_mse"] for r in pts],
                          label=f"{label} (q={pts[0]['q']})", ms=4, lw=1.2, **style(label))
            ax.set_title(f"{kind}, d={d}, {dtype} (parameters, data, losses)", fontsize=10)
            ax.set_xlabel("eps (mu)")
            ax.set_ylabel("E||g_hat - grad||^2 / ||grad||^2")
            ax.grid(True, which="major", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=9)
    fig.suptitle(f"zoft {zoft.__version__} estimators: relative MSE vs eps, <= {cfg['budget']} evaluations "
                 f"per estimate (mean), {cfg['seeds']} seeds")
    fig.tight_layout(rect=(0, 0.05 if len(panels) > 2 else 0.1, 1, 0.98))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def select(rows, dtype, kind, d, label) -> list[dict]:
    return [r for r in rows if (r["dtype"], r["function"], r["dim"], r["estimator"]) == (dtype, kind, d, label)]


def print_table(rows: list[dict], cfg: dict) -> None:
    eps = cfg["eps"]
    for dtype in cfg["dtypes"]:
        for kind in FUNCTIONS:
            for d in cfg["dims"]:
                print(f"\n{kind}, d={d}, {dtype} -- relative MSE "
                      f"E||g_hat-grad||^2/||grad||^2 per eps (evals: mean evaluations per estimate)")
                print(f"{'estimator':<22}{'q':>3}{'evals':>7}" + "".join(f"{e:>10.0e}" for e in eps))
                for label, _, _ in ROWS:
                    pts = {r["eps"]: r for r in select(rows, dtype, kind, d, label)}
                    first = pts[eps[0]]
                    print(f"{label:<22}{first['q']:>3}{first['mean_evals']:>7.2f}"
                          + "".join(f"{pts[e]['rel_mse']:>10.3g}" for e in eps))


def resolved(name: str, opts: dict) -> dict:
    """The telescoping series length actually used by a row (zoft's default unless set)."""
    est = make_estimator(name, **opts)
    return dict(telescoping_terms_used=est.law.max_terms) if hasattr(est, "law") else {}


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small smoke-test configuration (< 30 s)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"), help="output directory")
    ap.add_argument("--seeds", type=int, default=None, help="independent estimates per point")
    ap.add_argument("--budget", type=int, default=8, help="function evaluations per estimate")
    ap.add_argument("--dtype", choices=["float64", "float32", "both"], default=None,
                    help="dtype of parameters, data and losses; default: both (float64 and float32) "
                         "for a full run, float64 with --quick")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="processes")
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    dtype = args.dtype or ("float64" if args.quick else "both")
    dtypes = ["float64", "float32"] if dtype == "both" else [dtype]
    cfg = dict(QUICK if args.quick else FULL, budget=args.budget, dtypes=dtypes,
               quick=args.quick, data_seed=DATA_SEED, run_seed=RUN_SEED, zipf_s=ZIPF_S,
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
             rows={label: dict(estimator=name, **opts, **resolved(name, opts)) for label, name, opts in ROWS},
             results=rows), indent=1))
    write_csv(out / "estimators.csv", rows)
    plot(out / "estimators.png", rows, cfg)
    print(f"\nwrote {out}/estimators.json, .csv, .png; wall time {wall:.1f} s")


if __name__ == "__main__":
    main()
