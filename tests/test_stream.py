"""--stream-base: decoder blocks read from safetensors per forward; the same logits, loss and
ZO steps as the in-memory model; memory holds no block between forwards; clear refusals."""

from __future__ import annotations

import pytest
import torch

from zoft.cli import main
from zoft.models import load_model
from zoft.stream import Checkpoint, load_streamed
from zoft.train import checkpoint
from zoft.train.config import TrainConfig
from zoft.train.loop import take_step, train
from zoft.train.session import Session

IDS = torch.tensor([[72, 101, 108, 108, 111, 32, 119, 111, 114]])


@pytest.fixture(scope="module", params=["tiny-opt", "tiny-llama"])
def folder(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    model, tok = load_model(request.param)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_checkpoint_reads_every_tensor_exactly(folder):
    from safetensors.torch import load_file

    ckpt = Checkpoint(folder)
    stored = {k: v for f in folder.glob("*.safetensors") for k, v in load_file(f).items()}
    assert set(ckpt.where) == set(stored)
    for name, tensor in stored.items():
        assert torch.equal(ckpt.read(name), tensor)


@pytest.mark.parametrize("prefetch", [True, False])
def test_streamed_logits_equal_the_in_memory_models_and_blocks_are_dropped(folder, prefetch):
    ref, _ = load_model(str(folder))
    model, _, streamer = load_streamed(folder, torch.float32, prefetch=prefetch)
    block_params = [p for _, plan in streamer.blocks for owner, attr, _ in plan for p in [getattr(owner, attr)]]
    assert all(p.is_meta for p in block_params)  # not in memory before a forward
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=IDS).logits, ref(input_ids=IDS).logits, rtol=0, atol=0)
    assert all(getattr(owner, attr).is_meta for _, plan in streamer.blocks for owner, attr, _ in plan)  # dropped again
    per_forward = sum(p.numel() * 4 for p in block_params)
    assert streamer.bytes_read == per_forward
    streamer.close()


def cfg_for(folder, tmp_path, stream: bool, peft: str = "lora", **kw) -> TrainConfig:
    base = dict(model=str(folder), task="sentiment-demo", peft=peft, optimizer="zo-sgd", lr=1e-1, eps=1e-2, steps=3,
                batch_size=4, train_size=8, dev_size=4, test_size=4, max_length=48, eval_every=0, dtype="fp32",
                stream_base=stream or None, device="cpu", out=str(tmp_path / ("stream" if stream else "memory")))
    return TrainConfig(**{**base, **kw})


@pytest.mark.parametrize("peft", ["lora", "prefix", "prompt"])
def test_zo_steps_on_a_streamed_base_equal_the_in_memory_ones_bitwise(folder, tmp_path, peft):
    sessions = [Session.build(cfg_for(folder, tmp_path, stream, peft), log=lambda m: None) for stream in (False, True)]
    memory, streamed = sessions
    start = {k: v.clone() for k, v in checkpoint.trainable_state(memory.model).items()}
    with torch.no_grad():  # LoRA A is drawn differently on the two paths: start both from one point
        for name, value in checkpoint.trainable_state(streamed.model).items():
            value.copy_(start[name])
    batch = memory.batch(memory.splits.train[:4])
    losses = [[take_step(s, [batch]) for _ in range(3)] for s in sessions]
    assert losses[0] == losses[1]
    a, b = checkpoint.trainable_state(memory.model), checkpoint.trainable_state(streamed.model)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert any(not torch.equal(a[n], start[n]) for n in a)  # the steps moved it


def test_a_streamed_run_trains_saves_and_resumes(folder, tmp_path):
    cfg = cfg_for(folder, tmp_path, True, "prefix", steps=4, save_every=2, eval_every=2)
    assert train(cfg)["status"] == "finished"
    assert main(["train", "--resume", str(tmp_path / "stream"), "--steps", "6"]) == 0


def test_stream_base_refusals(folder, tmp_path, capsys):
    for extra, words in [(["--peft", "full"], "trains the blocks"), (["--optimizer", "fo-adam"], "back-propagates"),
                         (["--quantize", "int8"], "choose one")]:
        code = main(["train", "--model", str(folder), "--stream-base", "--steps", "1", "--device", "cpu",
                     "--out", str(tmp_path / "r"), *extra])
        assert code != 0 and words in capsys.readouterr().err
    code = main(["train", "--model", "tiny-llama", "--stream-base", "--steps", "1", "--out", str(tmp_path / "t")])
    assert code != 0 and "local model folder" in capsys.readouterr().err
