"""ZO Fine-tuner (zoft.learned): PertNN, energy normalisation, file format, meta-training and
the zo-finetuner optimizer, on tiny models only (no downloads)."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from torch import nn

import zoft
from problems import Quadratic
from zoft.learned import (FEATURES, Block, FineTuner, FineTunerConfig, PertNN, block_layout,
                          learn_finetuner, meta_train, normalised_scales)

pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")


def randomised(ft: FineTuner, seed: int = 0, spread: float = 0.5) -> FineTuner:
    """Give every PertNN a non-zero output layer, so that sigma depends on the inputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for net in ft.nets:
            net.out.weight.uniform_(-spread, spread, generator=gen)
    return ft


def finetuner_for(model: nn.Module, base: str = "test", seed: int | None = 0, spread: float = 0.5,
                  **config) -> FineTuner:
    """A FineTuner for ``model``; untrained (every sigma = 1) when ``seed`` is None."""
    ft = FineTuner(block_layout(model.named_parameters()), base, FineTunerConfig(**config))
    return ft if seed is None else randomised(ft, seed, spread)


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from threads, and on a loaded machine OpenMP's spinning
    threads make their backward passes many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_llama():
    import transformers

    cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, vocab_size=128)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = transformers.LlamaForCausalLM(cfg)
    ids = torch.randint(0, 128, (4, 12), generator=torch.Generator().manual_seed(0))
    return model.eval(), ids


class Distracted(nn.Module):
    """Least squares in ``w`` (8 entries) plus a 2000-entry tensor the loss ignores: an
    isotropic perturbation spends 99.6% of its energy where it cannot help."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.register_buffer("x", torch.randn(32, 8, generator=gen))
        self.register_buffer("y", self.x @ torch.randn(8, generator=gen))
        self.w = nn.Parameter(torch.zeros(8))
        self.distractor = nn.Parameter(torch.zeros(40, 50))

    def forward(self) -> torch.Tensor:
        return ((self.x @ self.w - self.y) ** 2).mean() + 0.0 * self.distractor.sum()


# -- PertNN and normalisation --------------------------------------------------------------
def test_pertnn_shapes_positivity_and_untrained_output():
    net = PertNN(hidden=16, generator=torch.Generator().manual_seed(0))
    x = torch.randn(7, len(FEATURES), generator=torch.Generator().manual_seed(1))
    assert net(x).shape == (7,) and torch.equal(net(x), torch.ones(7))  # untrained: sigma = 1
    randomised_net = randomised(FineTuner([Block("a", ("a",), ((3,),))], "m", FineTunerConfig(hidden=16))).nets[0]
    out = randomised_net(x)
    assert out.shape == (7,) and bool((out >= 0).all()) and out.std() > 0


def test_stacked_forward_equals_each_network_on_its_row():
    ft = finetuner_for(Quadratic(), hidden=16)
    x = torch.randn(2, len(FEATURES), generator=torch.Generator().manual_seed(2))
    each = torch.stack([net(x[b]) for b, net in enumerate(ft.nets)])
    torch.testing.assert_close(ft.sigmas(x), each)


def test_normalisation_preserves_total_energy():
    gen = torch.Generator().manual_seed(0)
    sigmas = torch.rand(50, generator=gen, dtype=torch.float64)
    sizes = torch.randint(1, 10_000, (50,), generator=gen)
    s = normalised_scales(sigmas, sizes)
    assert float((sizes * s ** 2).sum()) == pytest.approx(float(sizes.sum()), rel=1e-12)
    torch.testing.assert_close(s / s[0], sigmas / sigmas[0])  # a common factor c
    for value in (0.5, 1.0, 4.0):  # equal sigmas: exactly the isotropic scale 1
        s = normalised_scales(torch.full((5,), value), sizes[:5])
        assert torch.equal(s, torch.ones(5, dtype=torch.float64))


@pytest.mark.parametrize("sigmas, match", [([0.0, 0.0], "total energy 0"), ([1.0, -1.0], r"sigma\[1\] = -1"),
                                           ([float("nan"), 1.0], r"sigma\[0\] = nan")])
def test_normalisation_rejects_bad_sigmas(sigmas, match):
    with pytest.raises(ValueError, match=match):
        normalised_scales(torch.tensor(sigmas), torch.tensor([3, 4]))


def test_block_layout_per_tensor_per_module_and_trainable_only():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    model[1].bias.requires_grad_(False)
    assert [b.name for b in block_layout(model.named_parameters())] == ["0.weight", "0.bias", "1.weight"]
    by_module = block_layout(model.named_parameters(), group_by="module")
    assert [(b.name, b.tensors, b.numel) for b in by_module] == [("0", ("0.weight", "0.bias"), 16),
                                                                  ("1", ("1.weight",), 8)]
    with pytest.raises(ValueError, match="invalid group_by 'layer'"):
        block_layout(model.named_parameters(), group_by="layer")


def test_grouped_block_statistics_pool_the_tensors_exactly():
    model = nn.Linear(5, 3)
    ft = FineTuner(block_layout(model.named_parameters(), "module"), "m")
    mean, var = ft.statistics([model.weight, model.bias])
    flat = torch.cat([model.weight.detach().reshape(-1), model.bias.detach()]).double()
    torch.testing.assert_close(mean, flat.mean()[None])
    torch.testing.assert_close(var, flat.var(correction=0)[None])


# -- file ------------------------------------------------------------------------------------
def test_save_load_roundtrip_gives_identical_sigmas(tmp_path):
    model = Quadratic()
    ft = finetuner_for(model, base="org/base", hidden=8, var_floor=1e-6, seed=3)
    ft.training_record = {"history": {"meta_loss": [1.0, 0.5]}}
    ft.save(tmp_path / "f.pt")
    back = FineTuner.load(tmp_path / "f.pt", base_model="org/base", layout=block_layout(model.named_parameters()))
    x = torch.randn(2, len(FEATURES), generator=torch.Generator().manual_seed(0))
    assert torch.equal(ft.sigmas(x), back.sigmas(x))
    assert back.config == ft.config and back.layout == ft.layout
    assert back.training_record == ft.training_record


def test_load_rejects_a_different_base_model_or_layout(tmp_path):
    model = Quadratic()
    finetuner_for(model, base="org/base").save(tmp_path / "f.pt")
    with pytest.raises(ValueError, match="trained for base model 'org/base', not 'org/other'"):
        FineTuner.load(tmp_path / "f.pt", base_model="org/other")
    other = Quadratic(d=24)  # w: (6, 2) instead of (5, 2)
    with pytest.raises(ValueError, match=r"block 0 is 'w' \(tensors \['w'\], shapes \[\[5, 2\]\]\) in the "
                                         r"FineTuner but 'w' \(tensors \['w'\], shapes \[\[6, 2\]\]\) in "
                                         r"the model"):
        FineTuner.load(tmp_path / "f.pt", layout=block_layout(other.named_parameters()))
    with pytest.raises(ValueError, match="the FineTuner has 2 blocks and the model 1; the first extra block, "
                                         "in the FineTuner, is 'b'"):
        FineTuner.load(tmp_path / "f.pt", layout=block_layout([("w", model.w)]))


@pytest.mark.parametrize("content, match", [
    (b"not a torch file", "is not a FineTuner file"),
    ({"format": "something-else"}, "is not a FineTuner file"),
    ({"format": "zoft-finetuner", "version": 99}, "version 99; this zoft reads 1"),
    ({"format": "zoft-finetuner", "version": 1, "base_model": "m"},
     r"missing \['layout', 'config', 'state_dict'\]"),
    ({"format": "zoft-finetuner", "version": 1, "base_model": "m", "layout": [{"name": "a"}], "config": {},
      "state_dict": {}}, "bad layout or config"),
    ({"format": "zoft-finetuner", "version": 1, "base_model": "m", "config": {},
      "layout": [{"name": "a", "tensors": ["a"], "shapes": [[2]]}], "state_dict": {}}, "weights do not fit"),
])
def test_malformed_files_raise_value_error(tmp_path, content, match):
    path = tmp_path / "bad.pt"
    path.write_bytes(content) if isinstance(content, bytes) else torch.save(content, path)
    with pytest.raises(ValueError, match=match):
        FineTuner.load(path)


# -- meta-training ---------------------------------------------------------------------------
def test_meta_training_learns_where_to_spend_the_perturbation():
    model = Distracted()
    loss = lambda batch: model()
    ft, hist = meta_train(model, [None], loss, base_model="toy", steps=60, lr=1e-3, meta_lr=1e-3, eps=1e-3,
                          reset_every=1)  # theta back at its start every step: only phi changes
    assert len(hist.meta_loss) == 60 and hist.resets == list(range(1, 60))
    first, last = sum(hist.meta_loss[:10]) / 10, sum(hist.meta_loss[-10:]) / 10
    assert last < first - 0.1, (first, last)
    with torch.no_grad():
        s = ft.scales([model.w, model.distractor], (hist.base_loss[0],) * 2, torch.ones(2))
    assert s[0] > 2.0 * s[1], s  # energy moved to the block the loss depends on
    again = Distracted()
    _, hist2 = meta_train(again, [None], lambda b: again(), base_model="toy", steps=3, lr=1e-3,
                              meta_lr=1e-3, eps=1e-3, reset_every=1)
    assert hist2.meta_loss == hist.meta_loss[:3]  # seeded and deterministic


def test_meta_training_follows_a_trajectory_on_a_tiny_llama(one_thread):
    model, ids = tiny_llama()
    loss = lambda batch: model(input_ids=batch, labels=batch).loss
    ft, hist = meta_train(model, [ids], loss, base_model="tiny-llama", steps=30, lr=3e-3, meta_lr=1e-3, eps=1e-3)
    assert [b.name for b in ft.layout] == [n for n, _ in model.named_parameters()]
    assert sum(hist.meta_loss[-5:]) < sum(hist.meta_loss[:5]) and all(map(math.isfinite, hist.meta_loss))
    assert ft.training_record["hyperparameters"]["lr"] == 3e-3


def test_learn_finetuner_on_lora_blocks_then_zo_finetuner_trains_the_adapter(tmp_path, one_thread):
    from zoft.peft import apply_peft, trainable_parameters

    base, ids = tiny_llama()
    model = apply_peft(base, "lora", lora_r=2).eval()
    loss = lambda batch: model(input_ids=batch, labels=batch).loss
    before = {n: p.detach().clone() for n, p in trainable_parameters(model)}
    ft = learn_finetuner(model, [ids], loss, base_model="tiny-llama", out=tmp_path / "lora.ft", steps=4,
                         lr=1e-2, reset_every=2, group_by="module")
    assert all(torch.equal(p, before[n]) for n, p in trainable_parameters(model))  # restored
    assert {t for b in ft.layout for t in b.tensors} == set(before) and all("lora_" in b.name for b in ft.layout)
    opt = zoft.make_optimizer("zo-finetuner", trainable_parameters(model), finetuner=tmp_path / "lora.ft",
                              base_model="tiny-llama", lr=1e-2, eps=1e-3)
    start = float(loss(ids).detach())
    for _ in range(30):
        opt.step(lambda: loss(ids))
    assert float(loss(ids).detach()) < start


def test_meta_training_rejects_bad_values():
    model = Distracted()
    with pytest.raises(ValueError, match="invalid reset_every -1"):
        meta_train(model, [None], lambda b: model(), base_model="m", steps=2, lr=0.1, reset_every=-1)
    with pytest.raises(ValueError, match="yielded nothing on pass 2"):
        meta_train(model, iter([None]), lambda b: model(), base_model="m", steps=2, lr=0.1)


# -- the zo-finetuner optimizer --------------------------------------------------------------
def run(name: str, model: nn.Module, steps: int, params=None, **hp) -> torch.optim.Optimizer:
    opt = zoft.make_optimizer(name, model.parameters() if params is None else params, **hp)
    for _ in range(steps):
        opt.step(model)
    return opt


@pytest.mark.parametrize("bias", [1.0, 0.5])
@pytest.mark.parametrize("extra", [{}, dict(q=2, weight_decay=0.1)])
def test_equal_sigmas_give_exactly_zo_sgds_update(bias, extra):
    ft = finetuner_for(Quadratic(), seed=None)
    for net in ft.nets:
        net.out.bias.data.fill_(bias)  # every block sigma = bias: c * sigma = 1 exactly
    a, b = Quadratic(), Quadratic()
    run("zo-sgd", a, 8, lr=0.05, eps=1e-3, seed=5, **extra)
    opt = run("zo-finetuner", b, 8, finetuner=ft, lr=0.05, eps=1e-3, seed=5, **extra)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert opt.forward_passes == 8 * 2 * extra.get("q", 1) + 1  # + f(theta_0), once


def test_zo_finetuner_decreases_the_loss_and_uses_its_scales():
    model = Quadratic()
    start = float(model().detach())
    opt = run("zo-finetuner", model, 150, finetuner=finetuner_for(model, spread=2.0), lr=0.05, eps=1e-3, seed=1)
    assert float(model().detach()) < 0.5 * start
    scales = opt.state_dict()["zo_finetuner"]["scales"]
    assert len(scales) == 2 and abs(scales[0] - scales[1]) > 1e-3  # not isotropic
    sizes = [p.numel() for p in model.parameters()]
    assert sum(n * s * s for n, s in zip(sizes, scales)) == pytest.approx(sum(sizes))


def test_state_dict_resume_continues_bit_identically():
    ft = finetuner_for(Quadratic(), spread=2.0)
    model = Quadratic()
    opt = run("zo-finetuner", model, 5, finetuner=ft, lr=0.05, eps=1e-3, seed=3)
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    for _ in range(5):
        opt.step(model)
    resumed = Quadratic()
    resumed.load_state_dict(saved_model)
    opt2 = zoft.make_optimizer("zo-finetuner", resumed.parameters(), finetuner=ft, lr=0.05, eps=1e-3, seed=99)
    opt2.load_state_dict(saved_opt)
    for _ in range(5):
        opt2.step(resumed)
    assert all(torch.equal(x, y) for x, y in zip(model.parameters(), resumed.parameters()))
    assert opt2.forward_passes == opt.forward_passes  # no second f(theta_0) after a resume
    other = zoft.make_optimizer("zo-finetuner", resumed.parameters(),
                                finetuner=finetuner_for(Quadratic(), seed=9))
    with pytest.raises(ValueError, match="saved with a different FineTuner"):
        other.load_state_dict(saved_opt)


def test_no_parameter_sized_state():
    model = Quadratic()
    opt = run("zo-finetuner", model, 3, finetuner=finetuner_for(model), lr=0.05)
    assert [v for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor)] == []
    extra = opt.state_dict()["zo_finetuner"]
    assert len(extra["scales"]) == 2 and len(extra["losses"]) == 2


def test_named_parameters_are_matched_by_name_in_any_group_order():
    ft = finetuner_for(Quadratic(), spread=2.0)  # blocks w, b
    swapped = FineTuner([ft.layout[1], ft.layout[0]], "test", ft.config)  # blocks b, w: same networks
    swapped.nets[0].load_state_dict(ft.nets[1].state_dict())
    swapped.nets[1].load_state_dict(ft.nets[0].state_dict())
    a, b = Quadratic(), Quadratic()
    run("zo-finetuner", a, 5, params=[a.b, a.w], finetuner=swapped, lr=0.05, seed=2)
    groups = [{"params": [("b", b.b)]}, {"params": [("w", b.w)]}]  # as a weight-decay split reorders them
    run("zo-finetuner", b, 5, params=groups, finetuner=ft, lr=0.05, seed=2)
    assert torch.equal(a.w, b.w) and torch.equal(a.b, b.b)
    assert not torch.equal(b.w.detach(), torch.zeros_like(b.w))


@pytest.mark.parametrize("params, match", [
    (lambda m: [m.b, m.w], r"parameter 0 should be tensor 'w' of block 'w', shape \[5, 2\]; got shape \[10\]"),
    (lambda m: [m.w], r"parameter 1 should be tensor 'b' of block 'b', shape \[10\]; got nothing"),
    (lambda m: [("w", m.w)], r"tensor 'b' of block 'b' .* is not among the optimizer's parameters"),
    (lambda m: [("w", m.w), ("b", m.b), ("c", nn.Parameter(torch.zeros(2)))], "parameter 'c' is in no block"),
    (lambda m: [("w", m.b), ("b", m.w)], r"tensor 'w' of block 'w' .* has shape \[10\] in the model"),
])
def test_parameters_that_do_not_fit_the_layout_raise(params, match):
    model = Quadratic()
    with pytest.raises(ValueError, match=match):
        zoft.make_optimizer("zo-finetuner", params(model), finetuner=finetuner_for(model))


@pytest.mark.parametrize("hp, match", [
    ({}, "zo-finetuner needs finetuner="),
    (dict(estimator="forward"), "invalid estimator 'forward' for zo-finetuner"),
    (dict(perturbation="dap"), "invalid perturbation 'dap' for zo-finetuner"),
    (dict(base_model="other"), "trained for base model 'test', not 'other'"),
])
def test_bad_optimizer_values_raise(hp, match):
    model = Quadratic()
    if hp:
        hp["finetuner"] = finetuner_for(model)
    with pytest.raises(ValueError, match=match):
        zoft.make_optimizer("zo-finetuner", model.parameters(), **hp)


def test_never_touches_the_global_rng():
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    model = Distracted()
    ft, _ = meta_train(model, [None], lambda b: model(), base_model="m", steps=2, lr=1e-3)
    run("zo-finetuner", model, 2, finetuner=ft)
    assert torch.equal(state, torch.get_rng_state())


MEMORY_SCRIPT = r"""
import json, resource, torch, zoft
from zoft.learned import FineTuner, block_layout
def optimizer(params):
    named = [(f"t{i}", p) for i, p in enumerate(params)]
    return zoft.make_optimizer("zo-finetuner", named, finetuner=FineTuner(block_layout(named), "m"), lr=1e-4)
small = [torch.nn.Parameter(torch.full((1000,), 0.5))]
optimizer(small).step(lambda: torch.dot(small[0], small[0]))  # warm-up
params = [torch.nn.Parameter(torch.full((10_000_000,), 0.5)) for _ in range(4)]
closure = lambda: sum(torch.dot(p, p) for p in params)
opt = optimizer(params)
closure()
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
before = peak()
for _ in range(2):  # the first step includes f(theta_0)
    opt.step(closure)
print(json.dumps({"growth": peak() - before}))
"""


def test_step_allocates_no_parameter_sized_memory():
    """As tests/test_memory.py for zo-sgd: 40 MB tensors (above glibc's mmap threshold, so a
    freed temporary leaves peak RSS): growth under two tensors (measured: one; a dense state is 4)."""
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT], capture_output=True, text=True, check=True,
                         timeout=300)
    growth = json.loads(out.stdout.strip().splitlines()[-1])["growth"]
    assert growth < 2 * 40_000_000, f"zo-finetuner grew peak RSS by {growth / 2**20:.1f} MiB"


def test_learn_finetuner_command_then_train_with_it(tmp_path):
    from zoft.cli import main

    common = ["--model", "tiny-llama", "--task", "sentiment-demo", "--train-size", "16", "--dev-size", "4",
              "--test-size", "4", "--batch-size", "8", "--max-length", "48", "--lr", "1e-3"]
    ft = tmp_path / "tiny.ft"
    assert main(["learn-finetuner", *common, "--peft", "lora", "--steps", "4", "--out", str(ft)]) == 0
    summary = json.loads(ft.with_suffix(".json").read_text())
    assert summary["blocks"] == 8 and summary["steps"] == 4 and ft.exists()
    run = ["train", *common, "--optimizer", "zo-finetuner", "--finetuner", str(ft), "--steps", "2"]
    assert main([*run, "--peft", "lora", "--out", str(tmp_path / "run")]) == 0
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "finished"
    # learned for LoRA's blocks: refused, with a message, on the full model's
    assert main([*run, "--peft", "full", "--out", str(tmp_path / "full")]) == 2
    assert main(["train", *common, "--optimizer", "zo-sgd", "--finetuner", str(ft),
                 "--out", str(tmp_path / "x")]) == 2
