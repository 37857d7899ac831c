"""Loss vs forward passes of every zoft optimizer at an equal forward-pass budget.

What it measures
    Every optimizer in zoft.list_optimizers() (but zo-finetuner, which needs a learned file), and
    zo-sgd, zo-sgd-mmt and zo-adam with DAP perturbations (Ma, UMD 2025: the momentum is DAP's
    reference; zo-sgd, which keeps none, spends half its queries on a pilot estimate), runs on
    two small convex problems in float32:
      lsq       multi-output least squares, W (8 x 24) + b (8): 200 parameters,
                f = 0.5 mean_i ||W x_i + b - y_i||^2, ill-conditioned features (kappa ~ 100)
      logistic  multinomial logistic regression, 4 classes, W (4 x 48) + b (4): 196 parameters,
                f = mean cross-entropy + 5e-3/2 ||W||^2
    until opt.forward_passes reaches the budget (default 3000). ZO optimizers count their own
    loss evaluations; FO optimizers (fo-sgd, fo-adam) count 1 forward per step but ALSO run a
    backward each step; forward-grad counts 1 per step but each is a jvp (forward-mode AD,
    ~2-3x a plain forward). The loss at the current iterate is recorded about 100 times
    along the way by an extra evaluation that is not counted. Each optimizer gets a small lr
    grid (half-decades, 3e-4 .. 3); the lr with the lowest final loss is kept, and the grid,
    every final loss and the choice are recorded; the chosen lr is then re-run with
    ``confirm_seeds`` optimizer seeds (0, 1, 2) to show the seed-to-seed spread. Other hyperparameters are zoft's defaults
    (eps = 1e-3, q = 1, gaussian perturbations, default momenta, seed 0). The optimum f* of
    each problem is computed in float64 (lstsq / L-BFGS), and the plot shows f - f*.

Outputs (in --out, default bench/results): convergence.json (config, machine, every run's
curve and final loss, best lr per optimizer), convergence.csv (every curve, long format,
with an is_best column), convergence.png (f - f* vs forward passes, log y, one panel per
problem, best lr of each optimizer).

Run (full, ~3-4 minutes on 2 CPU cores):
    .venv/bin/python bench/convergence.py
Smoke test (< 30 s):
    .venv/bin/python bench/convergence.py --quick --out /tmp/zoft-bench
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import multiprocessing
import os
import platform
import time
from pathlib import Path

import torch
from torch import nn

import zoft
from zoft.core import NonFiniteLossError

DATA_SEED = 7
OPT_SEED = 0
FULL = dict(budget=3000, lrs=[round(10 ** (k / 2), 12) for k in range(-7, 2)], points=100, confirm_seeds=3)  # 3e-4..3
QUICK = dict(budget=400, lrs=[1e-3, 1e-2, 1e-1], points=20, confirm_seeds=2)


# -- problems -----------------------------------------------------------------------------
class LeastSquares(nn.Module):
    """0.5 mean_i ||W x_i + b - y_i||^2 with feature scales from 1 down to 0.1."""

    def __init__(self, n: int = 256, d_in: int = 24, d_out: int = 8) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(DATA_SEED)
        x = torch.randn(n, d_in, generator=gen) * torch.logspace(0, -1, d_in)
        w_true, b_true = torch.randn(d_out, d_in, generator=gen), torch.randn(d_out, generator=gen)
        y = x @ w_true.T + b_true + 0.1 * torch.randn(n, d_out, generator=gen)
        self.register_buffer("x", x)
        self.register_buffer("y", y)
        self.weight = nn.Parameter(torch.zeros(d_out, d_in))
        self.bias = nn.Parameter(torch.zeros(d_out))

    def forward(self) -> torch.Tensor:
        return 0.5 * (self.x @ self.weight.T + self.bias - self.y).square().sum(1).mean()

    def optimum(self) -> float:
        x = torch.cat([self.x, torch.ones(len(self.x), 1)], 1).double()
        sol = torch.linalg.lstsq(x, self.y.double()).solution
        return float(0.5 * (x @ sol - self.y.double()).square().sum(1).mean())


class Logistic(nn.Module):
    """Multinomial logistic regression with an L2 penalty on W (strongly convex)."""

    def __init__(self, n: int = 512, d_in: int = 48, classes: int = 4, l2: float = 5e-3) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(DATA_SEED + 1)
        x = torch.randn(n, d_in, generator=gen) * torch.logspace(0, -0.5, d_in)
        teacher = torch.randn(classes, d_in, generator=gen)
        noise = -torch.log(-torch.log(torch.rand(n, classes, generator=gen)))  # Gumbel
        self.register_buffer("x", x)
        self.register_buffer("labels", (x @ teacher.T + noise).argmax(1))
        self.l2 = l2
        self.weight = nn.Parameter(torch.zeros(classes, d_in))
        self.bias = nn.Parameter(torch.zeros(classes))

    def forward(self) -> torch.Tensor:
        return self.loss(self.weight, self.bias)

    def loss(self, weight, bias) -> torch.Tensor:
        logits = self.x.to(weight.dtype) @ weight.T + bias
        ce = nn.functional.cross_entropy(logits, self.labels)
        return ce + 0.5 * self.l2 * weight.square().sum()

    def optimum(self) -> float:
        w = torch.zeros_like(self.weight, dtype=torch.float64, requires_grad=True)
        b = torch.zeros_like(self.bias, dtype=torch.float64, requires_grad=True)
        lbfgs = torch.optim.LBFGS([w, b], max_iter=1000, tolerance_grad=1e-12, tolerance_change=1e-15,
                                  line_search_fn="strong_wolfe")

        def closure():
            lbfgs.zero_grad()
            value = self.loss(w, b)
            value.backward()
            return value

        lbfgs.step(closure)
        return float(self.loss(w, b).detach())


PROBLEMS = {"lsq": LeastSquares, "logistic": Logistic}


# -- one run ------------------------------------------------------------------------------
VARIANTS = {  # name -> (optimizer, options): DAP (Ma, UMD 2025) around the momentum, or a pilot for zo-sgd
    "zo-sgd+dap": ("zo-sgd", dict(perturbation="dap")),
    "zo-sgd-mmt+dap": ("zo-sgd-mmt", dict(perturbation="dap")),
    "zo-adam+dap": ("zo-adam", dict(perturbation="dap")),
}


def build(name: str, model: nn.Module, lr: float, seed: int):
    optimizer, extra = VARIANTS.get(name, (name, {}))
    if optimizer == "forward-grad":
        extra = dict(module=model)
    return zoft.make_optimizer(optimizer, model.parameters(), lr=lr, seed=seed, **extra)


def run(problem: str, name: str, lr: float, cfg: dict, seed: int = OPT_SEED) -> dict:
    """Optimise until the forward-pass budget is spent; the loss is recorded ~points times."""
    torch.manual_seed(0)  # nothing here should use the global RNG; pinned anyway
    model = PROBLEMS[problem]()
    opt = build(name, model, lr, seed)
    every = cfg["budget"] / cfg["points"]
    curve, steps, status, t0 = [(0, loss_at(model))], 0, "ok", time.perf_counter()
    while opt.forward_passes < cfg["budget"]:
        try:
            opt.step(model)
        except NonFiniteLossError:
            status = "diverged (non-finite loss)"
            break
        steps += 1
        if opt.forward_passes >= len(curve) * every or opt.forward_passes >= cfg["budget"]:
            curve.append((opt.forward_passes, loss_at(model)))
            if not math.isfinite(curve[-1][1]):
                status = "diverged (non-finite loss)"
                break
    wall = time.perf_counter() - t0
    final = curve[-1][1] if status == "ok" else math.inf
    return dict(problem=problem, optimizer=name, lr=lr, seed=seed, status=status, final_loss=final,
                forward_passes=opt.forward_passes, steps=steps, wall_seconds=wall, curve=curve,
                backward_per_step=name.startswith("fo-"))


@torch.no_grad()
def loss_at(model: nn.Module) -> float:
    return float(model())


def run_task(task: tuple) -> dict:
    torch.set_num_threads(1)
    return run(*task)


# -- the sweep ----------------------------------------------------------------------------
def sweep(tasks: list[tuple], workers: int) -> list[dict]:
    if workers <= 1:
        return [run_task(t) for t in tasks]
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        return pool.map(run_task, tasks, chunksize=2)


def confirm(best: dict, cfg: dict, workers: int) -> dict:
    """(problem, optimizer) -> final losses of the chosen lr over seeds 0 .. confirm_seeds-1."""
    extra = [(p, n, r["lr"], cfg, s) for (p, n), r in best.items() for s in range(1, cfg["confirm_seeds"])]
    finals = {key: [r["final_loss"]] for key, r in best.items()}
    for r in sweep(extra, workers):
        finals[(r["problem"], r["optimizer"])].append(r["final_loss"])
    return finals


def best_runs(runs: list[dict]) -> dict:
    """(problem, optimizer) -> the run with the lowest final loss (ties: the smaller lr)."""
    best = {}
    for r in runs:
        key = (r["problem"], r["optimizer"])
        if key not in best or r["final_loss"] < best[key]["final_loss"]:
            best[key] = r
    return best


# -- outputs ------------------------------------------------------------------------------
def machine_info() -> dict:
    return dict(platform=platform.platform(), python=platform.python_version(), torch=torch.__version__,
                zoft=zoft.__version__, cpu_count=os.cpu_count(), torch_threads_per_worker=1)


def write_csv(path: Path, runs: list[dict], best: dict) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["problem", "optimizer", "lr", "is_best", "status", "forward_passes", "loss", "loss_minus_opt"])
        for r in runs:
            is_best = best[(r["problem"], r["optimizer"])] is r
            for fp, loss in r["curve"]:
                writer.writerow([r["problem"], r["optimizer"], r["lr"], int(is_best), r["status"], fp, loss,
                                 loss - r["f_star"]])


def plot(path: Path, best: dict, cfg: dict, f_star: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PROBLEMS), figsize=(7 * len(PROBLEMS), 5.5), squeeze=False)
    cmap = plt.get_cmap("tab20")
    for ax, problem in zip(axes[0], PROBLEMS):
        for i, name in enumerate(cfg["optimizers"]):
            r = best[(problem, name)]
            fps = [fp for fp, _ in r["curve"]]
            gaps = [max(loss - f_star[problem], 1e-9) for _, loss in r["curve"]]
            ls = "--" if name.startswith("fo-") or name == "forward-grad" else "-"
            ax.semilogy(fps, gaps, ls, color=cmap(i * 2 % 20 + i // 10), lw=1.4, label=f"{name} (lr={r['lr']:.2g})")
        ax.set_title(f"{problem}: f* = {f_star[problem]:.4g} (float64)")
        ax.set_xlabel("forward passes (FO: + one backward each; forward-grad: jvp)")
        ax.set_ylabel("f(x) - f*  (float32 iterate; clipped at 1e-9)")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8, ncol=2)
    fig.suptitle(f"zoft optimizers, best lr of a grid, budget {cfg['budget']} forward passes")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_table(best: dict, cfg: dict, f_star: dict, seeds: dict) -> None:
    for problem in PROBLEMS:
        start = best[(problem, cfg["optimizers"][0])]["curve"][0][1]
        print(f"\n{problem}: initial loss {start:.5g}, f* = {f_star[problem]:.6g}, budget {cfg['budget']} forward passes; "
              f"last column: min .. max of f - f* at the chosen lr over seeds 0..{cfg['confirm_seeds'] - 1}")
        print(f"{'optimizer':<14}{'best lr':>9}{'final loss':>13}{'f - f*':>11}{'fwd passes':>12}{'steps':>7}"
              f"{'wall s':>8}{'f - f* over seeds':>22}  note")
        for name in cfg["optimizers"]:
            r = best[(problem, name)]
            note = "FO: +1 backward/step" if r["backward_per_step"] else ("jvp per pass" if name == "forward-grad" else "")
            if r["status"] != "ok":
                note = r["status"]
            if r["lr"] in (min(cfg["lrs"]), max(cfg["lrs"])):
                note += " [best lr at the edge of the grid]"
            gaps = [v - f_star[problem] for v in seeds[(problem, name)]]
            spread = f"{min(gaps):.2g} .. {max(gaps):.2g}"
            print(f"{name:<14}{r['lr']:>9.2g}{r['final_loss']:>13.6g}{r['final_loss'] - f_star[problem]:>11.3g}"
                  f"{r['forward_passes']:>12}{r['steps']:>7}{r['wall_seconds']:>8.2f}{spread:>22}  {note}")


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small smoke-test configuration (< 30 s)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"), help="output directory")
    ap.add_argument("--budget", type=int, default=None, help="forward passes per run")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="processes")
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    cfg = dict(QUICK if args.quick else FULL, quick=args.quick, optimizers=[*(n for n in zoft.list_optimizers() if n != "zo-finetuner"),  # needs a learned file
                                                                    *VARIANTS],
               data_seed=DATA_SEED, opt_seed=OPT_SEED, dtype="float32", workers=args.workers,
               hyperparameters="zoft defaults except lr (ZO: eps=1e-3, q=1, gaussian, central; "
                               "jaguar: coordinate estimator, block_fraction=0.1, momentum=1e-2)")
    if args.budget:
        cfg["budget"] = args.budget
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    f_star = {p: cls().optimum() for p, cls in PROBLEMS.items()}
    runs = sweep([(p, n, lr, cfg) for p in PROBLEMS for n in cfg["optimizers"] for lr in cfg["lrs"]], args.workers)
    for r in runs:
        r["f_star"] = f_star[r["problem"]]
    best = best_runs(runs)
    seeds = confirm(best, cfg, args.workers)
    wall = time.perf_counter() - t0
    print_table(best, cfg, f_star, seeds)
    choice = {f"{p}/{n}": dict(lr=r["lr"], final_loss=r["final_loss"], final_loss_per_seed=seeds[(p, n)])
              for (p, n), r in best.items()}
    grid = {f"{r['problem']}/{r['optimizer']}": {} for r in runs}
    for r in runs:
        grid[f"{r['problem']}/{r['optimizer']}"][f"{r['lr']:.2g}"] = r["final_loss"]
    (out / "convergence.json").write_text(json.dumps(
        dict(config=cfg, machine=machine_info(), wall_seconds=wall, f_star=f_star, best=choice,
             final_loss_grid=grid, runs=runs), indent=1))
    write_csv(out / "convergence.csv", runs, best)
    plot(out / "convergence.png", best, cfg, f_star)
    print(f"\nwrote {out}/convergence.json, .csv, .png; wall time {wall:.1f} s")


if __name__ == "__main__":
    main()
