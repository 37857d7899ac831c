"""Conformance table for every optimizer: adding an optimizer is adding one row to ROWS."""

from __future__ import annotations

import copy

import pytest
import torch

import zoft
from problems import Logistic, Quadratic
from zoft.learned import FineTuner, block_layout

# name -> (hyperparameters for the quadratic, for the logistic regression)
ROWS = {
    "zo-sgd": (dict(lr=0.05, eps=1e-3), dict(lr=0.5, eps=1e-3)),
    "zo-sgd-mmt": (dict(lr=0.01, eps=1e-3, momentum=0.8), dict(lr=0.1, eps=1e-3, momentum=0.8)),
    "zo-sgd-sign": (dict(lr=0.01, eps=1e-3), dict(lr=0.02, eps=1e-3)),
    "zo-sgd-cons": (dict(lr=0.05, eps=1e-3), dict(lr=0.5, eps=1e-3)),
    "zo-adam": (dict(lr=0.05, eps=1e-3), dict(lr=0.05, eps=1e-3)),
    "jaguar-sign": (dict(lr=0.01, eps=1e-3, momentum=0.5, block_fraction=0.3),
                    dict(lr=0.02, eps=1e-3, momentum=0.5, block_fraction=0.3)),
    "jaguar-muon": (dict(lr=0.01, eps=1e-3, momentum=0.5, block_fraction=0.3),
                    dict(lr=0.02, eps=1e-3, momentum=0.5, block_fraction=0.3)),
    "zo-muon": (dict(lr=0.01, eps=1e-3, momentum=0.5), dict(lr=0.05, eps=1e-3, momentum=0.5)),
    "zo-finetuner": (dict(lr=0.05, eps=1e-3), dict(lr=0.5, eps=1e-3)),  # untrained FineTuner (build)
    "fzoo": (dict(lr=0.05, eps=1e-3, q=4), dict(lr=0.05, eps=1e-3, q=4)),
    "hizoo": (dict(lr=0.05, eps=1e-3, hessian_smooth=1e-3), dict(lr=0.5, eps=1e-3, hessian_smooth=1e-3)),
    "lozo": (dict(lr=0.01, eps=1e-3, rank=1, v_interval=5), dict(lr=0.5, eps=1e-3, rank=1, v_interval=5)),
    "lozo-m": (dict(lr=0.002, eps=1e-3, rank=1, v_interval=5, momentum=0.8),
               dict(lr=0.1, eps=1e-3, rank=1, v_interval=5, momentum=0.8)),
    "subzero": (dict(lr=0.01, eps=1e-3, rank=1, v_interval=5), dict(lr=0.5, eps=1e-3, rank=1, v_interval=5)),
    "sparse-mezo": (dict(lr=0.05, eps=1e-3, sparsity=0.5), dict(lr=0.5, eps=1e-3, sparsity=0.5)),
    "forward-grad": (dict(lr=0.05), dict(lr=0.5)),
    "fo-sgd": (dict(lr=0.1), dict(lr=1.0)),
    "fo-adam": (dict(lr=0.05), dict(lr=0.05)),
}
ZO_NAMES = [n for n in ROWS if not n.startswith("fo-")]
BUDGET = 600  # forward passes per run


def test_table_covers_every_registered_optimizer():
    assert sorted(ROWS) == zoft.list_optimizers()


def build(name: str, model: torch.nn.Module, **hp) -> torch.optim.Optimizer:
    if name == "forward-grad":
        hp["module"] = model
    if name == "zo-finetuner":  # untrained: every sigma = 1 (tests/test_learned.py trains some)
        hp["finetuner"] = FineTuner(block_layout(model.named_parameters()), "test")
    return zoft.make_optimizer(name, model.parameters(), **hp)


def run(name: str, model: torch.nn.Module, hp: dict, budget: int = BUDGET) -> float:
    opt = build(name, model, **hp)
    while opt.forward_passes < budget:
        opt.step(model)
    return float(model())


@pytest.mark.parametrize("name", sorted(ROWS))
@pytest.mark.parametrize("problem", ["quadratic", "logistic"])
def test_decreases_loss_within_budget(name, problem):
    model = Quadratic() if problem == "quadratic" else Logistic()
    hp = ROWS[name][0 if problem == "quadratic" else 1]
    start = float(model().detach())
    final = run(name, model, dict(hp, seed=1))
    assert final < (0.5 if problem == "quadratic" else 0.8) * start, (start, final)


@pytest.mark.parametrize("name", ZO_NAMES)
def test_same_seed_is_bit_identical(name):
    runs = []
    for _ in range(2):
        model = Quadratic()
        run(name, model, dict(ROWS[name][0], seed=7), budget=40)
        runs.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*runs))


@pytest.mark.parametrize("name", sorted(ROWS))
def test_state_dict_resume_continues_identically(name):
    def steps(opt, model, n):
        for _ in range(n):
            opt.step(model)

    model = Quadratic()
    opt = build(name, model, **ROWS[name][0], seed=3)
    steps(opt, model, 5)
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    steps(opt, model, 5)

    resumed = Quadratic()
    resumed.load_state_dict(saved_model)
    opt2 = build(name, resumed, **ROWS[name][0], seed=999)  # the seed comes from the state
    opt2.load_state_dict(saved_opt)
    steps(opt2, resumed, 5)
    for a, b in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["zo-sgd", "zo-sgd-cons"])
def test_zo_sgd_keeps_no_tensor_state(name):
    model = Quadratic()
    opt = build(name, model, **ROWS[name][0])
    for _ in range(3):
        opt.step(model)
    tensors = [v for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    assert tensors == []


@pytest.mark.parametrize("name, buffers", [("zo-sgd-mmt", 1), ("jaguar-sign", 1), ("jaguar-muon", 1), ("hizoo", 1), ("fzoo", 0), ("lozo", 0),
                                           ("subzero", 0), ("sparse-mezo", 0),
                                           ("zo-muon", 1), ("zo-adam", 2), ("zo-sgd-sign", 0)])
def test_parameter_sized_buffers(name, buffers):
    model = Quadratic()
    opt = build(name, model, **ROWS[name][0])
    opt.step(model)
    for p in model.parameters():
        sized = [v for v in opt.state[p].values() if isinstance(v, torch.Tensor) and v.shape == p.shape]
        assert len(sized) == buffers


def test_step_returns_loss_at_x_or_mean_of_evaluations():
    model = Quadratic()
    f0 = float(model())
    loss = build("zo-sgd", model, lr=0.0, estimator="forward").step(model)
    assert float(loss) == pytest.approx(f0)
    calls = []
    loss = build("zo-sgd", model, lr=0.0).step(lambda: calls.append(float(model())) or model())
    assert float(loss) == pytest.approx(sum(calls) / len(calls))


class DenseRecorder:
    """Wraps an estimator and records the dense estimate it implies (for reference checks)."""

    def __init__(self, inner):
        self.inner, self.dense = inner, None

    def estimate(self, closure, space, seed, reference=None):
        est = self.inner.estimate(closure, space, seed, reference)
        self.dense = []
        for j, p in enumerate(space.params):
            g = sum(t.coef * space.grad_factor(j) * t.direction.weight(j, p) * t.direction.materialize(j, p)
                    for t in est.terms)
            self.dense.append(g)
        return est


@pytest.mark.parametrize("name, reference, hp", [
    ("zo-sgd", torch.optim.SGD, dict(lr=0.05, weight_decay=0.1)),
    ("zo-sgd-mmt", torch.optim.SGD, dict(lr=0.02, momentum=0.9, weight_decay=0.1)),
    ("zo-adam", torch.optim.Adam, dict(lr=0.05, betas=(0.8, 0.99), weight_decay=0.1)),
])
def test_matches_torch_optim_given_the_same_dense_estimate(name, reference, hp):
    model = Quadratic(dtype=torch.float64)
    twin = copy.deepcopy(model)
    opt = build(name, model, eps=1e-3, q=2, **hp)
    opt.estimator = recorder = DenseRecorder(opt.estimator)
    ref = reference(twin.parameters(), **hp)
    for _ in range(6):
        opt.step(model)
        for p, g in zip(twin.parameters(), recorder.dense):
            p.grad = g.clone()
        ref.step()
        for a, b in zip(model.parameters(), twin.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ZO_NAMES)
def test_nan_loss_raises_and_restores_parameters(name):
    model = Quadratic()
    for p in model.parameters():
        torch.nn.init.normal_(p)
    before = [p.detach().clone() for p in model.parameters()]
    calls = []
    bad_call = 1 if name == "forward-grad" else 2  # forward-grad evaluates once per step

    def closure():
        calls.append(1)
        return model() * (float("nan") if len(calls) == bad_call else 1.0)

    with pytest.raises(zoft.NonFiniteLossError):
        build(name, model, **ROWS[name][0]).step(closure)
    for a, b in zip(model.parameters(), before):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["fo-sgd", "fo-adam"])
def test_fo_baselines_run_backward_themselves(name):
    model = Quadratic()
    opt = build(name, model, lr=0.1)
    opt.step(model)
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("name", [n for n in ZO_NAMES if n != "forward-grad"])
def test_half_precision_parameters_train(name, dtype):
    model = Quadratic().to(dtype)
    start = float(model().detach())
    hp = dict(ROWS[name][0], eps=1e-2, seed=1)
    if name == "hizoo":  # this quadratic's loss is computed in the half dtype, where the second
        hp["hessian_smooth"] = 0.0  # difference at eps 1e-2 is below its rounding; zoft's LM loss is fp32
    final = run(name, model, hp, budget=300)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert final < 0.8 * start, (start, final)


def test_hizoo_curvature_estimate_is_unbiased_for_the_hessian_diagonal():
    """With lr 0 the point stays put, so on a quadratic the smoothed curvature converges to
    the Hessian's diagonal (the per-entry estimate's mean is exactly H_kk)."""
    model = Quadratic()
    opt = build("hizoo", model, lr=0.0, eps=1e-3, hessian_smooth=1e-3, seed=1)
    for _ in range(3000):
        opt.step(model)
    h = torch.cat([opt.state[p]["curvature"].reshape(-1) for p in model.parameters()])
    ratio = h / torch.diag(model.h)[: h.numel()]
    assert abs(float(ratio.mean()) - 1.0) < 0.3 and opt.forward_passes == 9000


def test_fzoo_step_is_normalised_by_the_loss_spread():
    """Scaling the loss by 1000 scales every loss difference and their spread alike: the same
    moves (the lr is in units of the spread, not of the gradient)."""
    finals = []
    for scale in (1.0, 1000.0):
        model = Quadratic()
        opt = build("fzoo", model, lr=0.05, eps=1e-3, q=4, seed=2)
        for _ in range(5):
            opt.step(lambda: model() * scale)
        finals.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
        assert opt.forward_passes == 25 and opt.last_spread > 0
    assert torch.allclose(finals[0], finals[1], rtol=1e-3, atol=1e-5)


def test_lozo_moves_a_matrix_by_a_rank_r_update_and_keeps_v_for_its_interval():
    model = Quadratic()  # w is 5 x 2: rank 1 moves are rank 1
    opt = build("lozo", model, lr=0.05, eps=1e-3, rank=1, v_interval=3, seed=4)
    starts, rows = [], []
    for _ in range(3):
        before = model.w.detach().clone()
        opt.step(model)
        delta = model.w.detach() - before
        assert torch.linalg.matrix_rank(delta.double(), rtol=1e-5) == 1
        rows.append(delta / delta.norm())
    # one V for the three steps: every move's row space is the same line
    assert all(abs(float((rows[0].T @ r).trace().abs())) > 0 for r in rows)
    v0 = [torch.linalg.svd(r.double())[2][0] for r in rows]
    assert all(torch.allclose(v.abs(), v0[0].abs(), atol=1e-6) for v in v0)


def test_lozo_m_keeps_an_m_by_r_momentum_per_matrix():
    model = Quadratic()
    opt = build("lozo-m", model, lr=0.01, eps=1e-3, rank=1, v_interval=2, seed=4)
    for _ in range(5):  # crosses two V redraws (the momentum is projected)
        opt.step(model)
    assert opt.state[model.w]["lowrank_momentum"].shape == (model.w.shape[0], 1)
    assert opt.state[model.b]["momentum_buffer"].shape == model.b.shape


def test_sparse_mezo_moves_only_the_small_magnitude_entries():
    model = Quadratic()
    with torch.no_grad():
        model.b.copy_(torch.arange(model.b.numel(), dtype=torch.float32))  # |b| = 0, 1, ..., 9
    opt = build("sparse-mezo", model, lr=0.05, eps=1e-3, sparsity=0.3, seed=1)
    before = model.b.detach().clone()
    opt.step(model)
    moved = (model.b.detach() != before).nonzero().reshape(-1).tolist()
    assert moved and set(moved) <= {0, 1, 2}  # the 30% smallest magnitudes
