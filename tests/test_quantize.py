"""--quantize int8|int4: the frozen base's linear layers stored quantized, the trainable set
unchanged, the forward close to the full-precision one, ZO and FO training through it, and
clear refusals."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from zoft.cli import main
from zoft.models import load_model
from zoft.peft import apply_peft
from zoft.quantize import QuantizedLinear, quantize_frozen, quantized_bytes
from zoft.train.config import TrainConfig
from zoft.train.loop import train
from zoft.train.session import Session


@pytest.mark.parametrize("bits, tol", [(8, 0.01), (4, 0.2)])
def test_quantized_linear_is_close_to_the_linear_and_its_dequantized_weight_exact(bits, tol):
    torch.manual_seed(0)
    linear = nn.Linear(64, 48)
    q = QuantizedLinear(linear, bits)
    x = torch.randn(5, 7, 64)
    w = q.dequantized(torch.float32)
    rel = (w - linear.weight).norm() / linear.weight.norm()
    assert 0 < rel < tol  # rounded, and not far
    with torch.no_grad():  # the layer computes exactly with the weight it stands for
        torch.testing.assert_close(q(x), nn.functional.linear(x, w, linear.bias), rtol=1e-5, atol=1e-5)
    if bits == 8:  # every row's largest entry is exactly representable
        torch.testing.assert_close(w.abs().amax(1), linear.weight.abs().amax(1))
    else:  # values in [-8, 7] per group of 32, two per byte
        assert q.qweight.dtype == torch.uint8 and q.qweight.shape == (48, 32) and q.scale.shape == (48, 2)


def test_the_fused_int8_kernel_matches_the_dequantized_product_in_bf16():
    torch.manual_seed(0)
    q = QuantizedLinear(nn.Linear(64, 32, bias=False), 8)
    x = torch.randn(9, 64).to(torch.bfloat16)
    with torch.no_grad():
        fused = q(x)
    ref = nn.functional.linear(x.float(), q.dequantized(torch.float32))
    torch.testing.assert_close(fused.float(), ref, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("peft", ["lora", "prefix", "prompt"])
def test_quantize_frozen_replaces_frozen_linears_only_and_keeps_the_trainable_set(peft):
    model = apply_peft(load_model("tiny-llama")[0], peft)
    trainable = {n: p.clone() for n, p in model.named_parameters() if p.requires_grad}
    head = model.get_base_model().get_output_embeddings()
    n, kept = quantize_frozen(model, "int8")
    assert kept == 0
    assert n == 14  # 2 layers x (q, k, v, o, gate, up, down)
    assert {n: p for n, p in model.named_parameters() if p.requires_grad}.keys() == trainable.keys()
    assert model.get_base_model().get_output_embeddings() is head and type(head) is nn.Linear
    assert not any(type(m) is nn.Linear and not m.weight.requires_grad and m is not head for m in model.modules())
    assert quantized_bytes(model) > 0


def test_int8_base_is_a_quarter_of_fp32_and_close_in_loss(tmp_path):
    def session(q):
        cfg = TrainConfig(model="tiny-llama", task="sentiment-demo", peft="lora", quantize=q, train_size=16, dev_size=8,
                          test_size=8, max_length=48, dtype="fp32", out=str(tmp_path / "x"))
        return Session.build(cfg, log=lambda m: None, train=False)
    full, q8 = session(None), session("int8")
    linear_bytes = sum(m.weight.numel() * 4 for m in full.model.modules()
                       if type(m) is nn.Linear and not m.weight.requires_grad
                       and m is not full.model.get_base_model().get_output_embeddings())
    assert quantized_bytes(q8.model) < 0.27 * linear_bytes
    with torch.no_grad():
        a = full.objective.loss(full.batch(full.splits.train))
        b = q8.objective.loss(q8.batch(q8.splits.train))
    assert abs(float(a) - float(b)) < 0.01


@pytest.mark.parametrize("optimizer, lr", [("zo-sgd", 1e-1), ("fo-adam", 1e-2)])
def test_training_on_a_quantized_base_lowers_the_loss(tmp_path, optimizer, lr):
    cfg = TrainConfig(model="tiny-llama", task="sentiment-demo", peft="lora", quantize="int8", optimizer=optimizer,
                      lr=lr, steps=20, batch_size=8, train_size=16, dev_size=8, test_size=8, max_length=48,
                      eval_every=0, dtype="fp32", out=str(tmp_path / optimizer))
    summary = train(cfg)
    assert summary["status"] == "finished"
    losses = [r["loss"] for r in map(__import__("json").loads, (tmp_path / optimizer / "metrics.jsonl").read_text().splitlines())
              if "loss" in r and "step" in r and "dev_loss" not in r]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.01


def test_quantize_is_refused_for_full_fine_tuning_and_unknown_kinds(tmp_path, capsys):
    assert main(["train", "--model", "tiny-llama", "--peft", "full", "--quantize", "int8", "--steps", "1",
                 "--out", str(tmp_path / "f")]) != 0
    assert "trains every weight" in capsys.readouterr().err
    with pytest.raises(ValueError, match="invalid quantize 'int3'"):
        TrainConfig(quantize="int3")
    with pytest.raises(ValueError, match="no frozen linear layer"):
        quantize_frozen(load_model("tiny-llama")[0], "int8")


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_int4_of_a_q4_1_gguf_keeps_the_files_blocks_and_the_same_loss(tmp_path, monkeypatch, dtype):
    """The file's Q4_1 blocks de-quantize to exactly the weights of the de-quantized model, so
    an int4 base built from them computes the same loss as the full-precision base (bitwise),
    where re-quantizing the weights would round them a second time."""
    from gguf_writer import write_tiny_llama_gguf

    monkeypatch.setenv("ZOFT_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "q41.gguf"
    write_tiny_llama_gguf(path, q4_1=True)
    logs: list[str] = []

    def session(q):
        cfg = TrainConfig(model=str(path), task="sentiment-demo", peft="lora", quantize=q, train_size=16, dev_size=8,
                          test_size=8, max_length=48, dtype=dtype, out=str(tmp_path / "x"))
        return Session.build(cfg, log=logs.append, train=False)
    full, q4 = session(None), session("int4")
    layers = [m for m in q4.model.modules() if isinstance(m, QuantizedLinear)]
    assert layers and all(m.minimum is not None for m in layers)  # every block linear kept as Q4_1
    assert any("of them the GGUF file's own Q4_1 blocks" in line for line in logs)
    with torch.no_grad():
        a = full.objective.loss(full.batch(full.splits.train))
        b = q4.objective.loss(q4.batch(q4.splits.train))
    assert float(a) == float(b)
    # 4 bits + an fp16 scale and minimum per 32 weights: 0.625 bytes per weight
    weights = sum(m.in_features * m.out_features for m in layers)
    assert quantized_bytes(q4.model) == weights * 0.625
    # the same layers re-quantized from the weights (a file without Q4_1 tensors) are not exact
    plain = session(None)
    n, kept = quantize_frozen(plain.model, "int4")
    assert n == len(layers) and kept == 0
    with torch.no_grad():
        assert float(plain.objective.loss(plain.batch(plain.splits.train))) != float(a)
