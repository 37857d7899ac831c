"""--offload-blocks (ZO2's block streaming for full fine-tuning), with the "device" another CPU
buffer: the offloaded step equals the in-memory one bitwise (ZO-SGD, momentum, Adam; tied and
untied heads; both noise engines; a changing lr), a failed step restores the weights, the
device holds at most two blocks, evaluation sees the pending updates, and what cannot be
offloaded is refused in one line."""

from __future__ import annotations

import copy

import pytest
import torch

from zoft.core import NonFiniteLossError
from zoft.models import load_model
from zoft.offload import BlockOffload
from zoft.optim import make_optimizer
from zoft.train import checkpoint
from zoft.train.config import TrainConfig
from zoft.train.loop import take_step, train
from zoft.train.session import Session

IDS = torch.tensor([[72, 101, 108, 108, 111, 32, 119, 111, 114], [5, 6, 7, 8, 9, 10, 11, 12, 13]])


def lm_loss(model):
    return lambda: model(input_ids=IDS, labels=IDS).loss


def pair(name: str, optimizer: str, **hp):
    a, _ = load_model(name)
    b = copy.deepcopy(a)
    make = lambda m: make_optimizer(optimizer, [{"params": list(m.parameters())}], **{"lr": 1e-2, "eps": 1e-2, **hp})
    return a, make(a), b, make(b)


def same_weights(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-opt"])
@pytest.mark.parametrize("optimizer,hp", [("zo-sgd", {}), ("zo-sgd-mmt", {}), ("zo-adam", {}),
                                          ("zo-sgd", {"weight_decay": 0.1, "rng": "counter"}),
                                          ("zo-sgd-mmt", {"perturbation": "rademacher", "rng": "counter"}),
                                          ("zo-sgd-sign", {"perturbation": "sphere"}), ("zo-muon", {})])
def test_offloaded_steps_equal_the_in_memory_ones_bitwise(name, optimizer, hp):
    a, opt_a, b, opt_b = pair(name, optimizer, **hp)
    start = copy.deepcopy(a)
    off = BlockOffload(b, opt_b)
    losses_a, losses_b = [], []
    for t in range(4):
        for opt in (opt_a, opt_b):  # a schedule changes the lr between steps
            for g in opt.param_groups:
                g["lr"] = 1e-2 * (1 - t / 8)
        losses_a.append(float(opt_a.step(lm_loss(a))))
        losses_b.append(float(off.step(lm_loss(b))))
    assert losses_a == losses_b
    assert not same_weights(a, b) or not off.pending  # the last update is still owed to the blocks
    off.flush()
    assert same_weights(a, b)
    assert not same_weights(a, start)  # the steps moved it
    assert opt_a.steps_taken == opt_b.steps_taken and opt_a.forward_passes == opt_b.forward_passes
    for pa, pb in zip(a.parameters(), b.parameters()):
        for key, value in opt_a.state[pa].items():
            other = opt_b.state[pb][key]
            assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other


def test_a_tied_head_is_perturbed_once_and_the_device_holds_two_blocks():
    a, opt_a, b, opt_b = pair("tiny-llama", "zo-sgd")
    off = BlockOffload(b, opt_b)
    tied = b.get_output_embeddings().weight is b.get_input_embeddings().weight
    assert bool(off.shared) == tied
    blocks = [u for u in off.units if u.offloaded]
    assert len(blocks) == b.config.num_hidden_layers
    off.step(lm_loss(b))
    assert 1 <= off.most_on_device <= 2
    per_block = sum(p.numel() * p.element_size() for _, _, p, _ in blocks[0].slots)
    # one step: every block up once and down once (the first step owes nothing, so no state moves)
    assert off.bytes_moved == 2 * per_block * len(blocks)


def test_an_untied_head_equals_the_in_memory_step():
    a, _ = load_model("tiny-llama")
    a.config.tie_word_embeddings = False
    a.lm_head.weight = torch.nn.Parameter(a.lm_head.weight.detach().clone())
    b = copy.deepcopy(a)
    opt_a = make_optimizer("zo-sgd", [{"params": list(a.parameters())}], lr=1e-2, eps=1e-2)
    opt_b = make_optimizer("zo-sgd", [{"params": list(b.parameters())}], lr=1e-2, eps=1e-2)
    off = BlockOffload(b, opt_b)
    assert not off.shared
    for _ in range(3):
        assert float(opt_a.step(lm_loss(a))) == float(off.step(lm_loss(b)))
    off.flush()
    assert same_weights(a, b)


def test_a_plain_forward_sees_the_pending_update():
    a, opt_a, b, opt_b = pair("tiny-opt", "zo-sgd-mmt")
    off = BlockOffload(b, opt_b)
    for _ in range(2):
        opt_a.step(lm_loss(a))
        off.step(lm_loss(b))
    assert off.pending
    with torch.no_grad():
        assert torch.equal(a(input_ids=IDS).logits, b(input_ids=IDS).logits)
    assert not off.pending and same_weights(a, b)  # the forward applied and copied back the updates


@pytest.mark.parametrize("where", ["plus", "minus", "nan"])
def test_a_failed_step_restores_the_weights_and_releases_both_forwards(where):
    a, opt_a, b, opt_b = pair("tiny-llama", "zo-sgd")
    off = BlockOffload(b, opt_b)
    off.step(lm_loss(b))  # so that the blocks owe an update when the failing step starts
    off.flush()
    before = copy.deepcopy(b)
    block = b.model.layers[1]
    calls = []

    def boom(module, args):
        calls.append(1)
        if (where == "plus" and len(calls) == 1) or (where == "minus" and len(calls) == 2):
            raise RuntimeError("injected")

    handle = block.register_forward_pre_hook(boom) if where != "nan" else None
    closure = (lambda: torch.tensor(float("nan"))) if where == "nan" else lm_loss(b)
    if where == "nan":
        closure = (lambda inner: lambda: inner() * float("nan"))(lm_loss(b))
    with pytest.raises(NonFiniteLossError if where == "nan" else RuntimeError):
        off.step(closure)
    if handle is not None:
        handle.remove()
    off.flush()
    for (n, x), y in zip(before.named_parameters(), b.parameters()):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-6, msg=n)
    assert all(isinstance(p, torch.nn.Parameter) and p.device.type == "cpu" for p in b.parameters())
    assert opt_b.steps_taken == 1
    off.step(lm_loss(b))  # and the next step runs
    assert opt_b.steps_taken == 2


@pytest.mark.parametrize("optimizer,hp,why", [
    ("jaguar-sign", {}, "estimator coordinate"), ("fzoo", {}, "its own step"), ("hizoo", {}, "its own step"),
    ("zo-sgd", {"q": 2}, "q = 2"), ("zo-sgd", {"perturbation": "dap"}, "perturbation dap"),
    ("zo-sgd", {"estimator": "forward"}, "estimator forward")])
def test_what_cannot_be_offloaded_is_refused(optimizer, hp, why):
    model, _ = load_model("tiny-llama")
    opt = make_optimizer(optimizer, [{"params": list(model.parameters())}], lr=1e-3, **hp)
    with pytest.raises(ValueError, match=why):
        BlockOffload(model, opt)


def cfg_for(tmp_path, offload: bool, **kw) -> TrainConfig:
    base = dict(model="tiny-llama", task="sentiment-demo", peft="full", optimizer="zo-sgd-mmt", lr=1e-3, eps=1e-2,
                steps=3, batch_size=4, train_size=8, dev_size=4, test_size=4, max_length=48, eval_every=0,
                dtype="fp32", offload_blocks=offload or None, device="cpu",
                out=str(tmp_path / ("offload" if offload else "memory")))
    return TrainConfig(**{**base, **kw})


def test_a_session_step_equals_the_in_memory_one(tmp_path):
    sessions = [Session.build(cfg_for(tmp_path, off, bucket_positions=0), log=lambda m: None) for off in (False, True)]
    memory, offloaded = sessions
    assert offloaded.offload is not None and memory.offload is None
    batch = memory.batch(memory.splits.train[:4])
    losses = [[take_step(s, [batch]) for _ in range(3)] for s in sessions]
    assert losses[0] == losses[1]
    a, b = checkpoint.trainable_state(memory.model), offloaded.trainable_state()  # (flushes)
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_an_offloaded_run_trains_saves_and_resumes(tmp_path):
    cfg = cfg_for(tmp_path, True, steps=4, save_every=2, eval_every=2)
    assert train(cfg)["status"] == "finished"
    cut = cfg_for(tmp_path, True, steps=2, save_every=2, eval_every=2, out=str(tmp_path / "cut"))
    train(cut)
    resumed = train(TrainConfig(**{**cut.__dict__, "steps": 4}), resume=True)
    assert resumed["status"] == "finished"
    # the uninterrupted run and the run resumed from step 2 end at the same weights
    from safetensors.torch import load_file
    final = lambda d: load_file(str(sorted((tmp_path / d).glob("weights-*.safetensors"))[-1]))
    x, y = final("offload"), final("cut")
    assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    # and the offloaded run ends where the in-memory one does
    train(cfg_for(tmp_path, False, steps=4, save_every=2, eval_every=2, bucket_positions=0))
    z = final("memory")
    assert all(torch.equal(x[k], z[k]) for k in x)


def test_the_cli_flag_reaches_the_refusals(tmp_path, capsys):
    from zoft.cli import main

    code = main(["train", "--model", "tiny-llama", "--offload-blocks", "--peft", "lora", "--steps", "1",
                 "--out", str(tmp_path / "r")])
    assert code != 0 and "--offload-blocks: it offloads the trainable blocks of --peft full" in capsys.readouterr().err


@pytest.mark.parametrize("kw,why", [
    ({"peft": "lora"}, "--peft full"), ({"grad_accum": 2}, "--grad-accum"),
    ({"stream_base": True, "peft": "full"}, "--stream-base"), ({"dtype": "bf16", "master_weights": True}, "master")])
def test_train_refuses_what_offloading_cannot_do(tmp_path, kw, why):
    with pytest.raises(ValueError, match=why):
        Session.build(cfg_for(tmp_path, True, **kw), log=lambda m: None)


def test_a_forward_that_runs_a_block_twice_is_refused_and_restored():
    a, opt_a, b, opt_b = pair("tiny-llama", "zo-sgd")
    off = BlockOffload(b, opt_b)
    before = copy.deepcopy(b)
    block = b.model.layers[0]

    def twice():
        with torch.no_grad():
            h = b.model.embed_tokens(IDS)
            block(h, position_embeddings=b.model.rotary_emb(h, torch.arange(IDS.shape[1])[None]))
        return lm_loss(b)()

    with pytest.raises(RuntimeError, match="exactly once"):
        off.step(twice)
    off.flush()
    for x, y in zip(before.parameters(), b.parameters()):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-6)
