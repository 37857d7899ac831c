"""zoft export: the run's best weights as a folder that transformers / peft load without zoft,
giving the logits of the zoft run's model."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from zoft.cli import main
from zoft.models import load_model
from zoft.peft import apply_peft
from zoft.train import checkpoint
from zoft.train.config import TrainConfig
from zoft.train.loop import train

IDS = torch.tensor([[72, 101, 108, 108, 111, 32, 119, 111, 114, 108, 100]])


def trained(tmp_path, peft: str, lr: float):
    run = tmp_path / "run"
    cfg = TrainConfig(model="tiny-llama", task="sentiment-demo", peft=peft, lr=lr, steps=3, batch_size=4,
                      train_size=8, dev_size=4, test_size=4, max_length=48, eval_every=3, dtype="fp32",
                      out=str(run))
    assert train(cfg)["status"] == "finished"
    model, _ = load_model("tiny-llama")
    model = apply_peft(model, peft)
    checkpoint.load_weights(run / checkpoint.BEST, model)
    return run, model.eval()


def logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


@pytest.mark.parametrize("peft, lr", [("lora", 1e-1), ("full", 1e-3)])
def test_export_is_a_plain_transformers_folder_with_the_runs_logits(tmp_path, peft, lr):
    run, zoft_model = trained(tmp_path, peft, lr)
    assert main(["export", str(run), "--out", str(tmp_path / "out")]) == 0
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    torch.testing.assert_close(logits(exported), logits(zoft_model), rtol=1e-5, atol=1e-5)
    base, _ = load_model("tiny-llama")
    assert not torch.allclose(logits(exported), logits(base), atol=1e-6)  # training changed it
    tok, (_, zoft_tok) = AutoTokenizer.from_pretrained(tmp_path / "out"), load_model("tiny-llama")
    assert tok("It was great.").input_ids == zoft_tok("It was great.").input_ids


@pytest.mark.parametrize("peft, lr", [("lora", 1e-1), ("prefix", 1e-1)])
def test_adapter_export_loads_with_peft(tmp_path, peft, lr):
    run, zoft_model = trained(tmp_path, peft, lr)
    argv = ["export", str(run), "--out", str(tmp_path / "out")] + (["--adapter-only"] if peft == "lora" else [])
    assert main(argv) == 0
    base, _ = load_model("tiny-llama")
    loaded = PeftModel.from_pretrained(base, tmp_path / "out").eval()
    torch.testing.assert_close(logits(loaded), logits(zoft_model), rtol=1e-5, atol=1e-5)


def test_export_refuses_a_non_empty_folder_and_adapter_only_for_full(tmp_path, capsys):
    run, _ = trained(tmp_path, "full", 1e-3)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    assert main(["export", str(run), "--out", str(tmp_path / "busy")]) == 2
    assert main(["export", str(run), "--out", str(tmp_path / "o"), "--adapter-only"]) == 2
    err = capsys.readouterr().err
    assert "is not empty" in err and "--adapter-only needs a PEFT run" in err
