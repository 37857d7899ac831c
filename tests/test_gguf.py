"""``--model FILE.gguf`` (or a folder holding one) loads like the bundled model: de-quantized,
cached as safetensors, the same logits and tokens as the model it was written from."""

from __future__ import annotations

import pytest
import torch

from gguf_writer import write_tiny_llama_gguf
from zoft.cli import main
from zoft.models import load_model


@pytest.fixture
def gguf_file(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOFT_CACHE", str(tmp_path / "cache"))
    (tmp_path / "m").mkdir()
    path = tmp_path / "m" / "tiny.gguf"
    model, tok = write_tiny_llama_gguf(path)
    return path, model, tok


def test_a_gguf_file_loads_with_the_same_logits_and_tokens(gguf_file, tmp_path):
    path, model, tok = gguf_file
    for name in (str(path), str(path.parent)):  # the file, or the folder that holds it
        loaded, loaded_tok = load_model(name)
        ids = torch.tensor([[1, 2, 3, 40, 50, 60, 100, 255]])
        with torch.no_grad():
            assert torch.equal(model(ids).logits, loaded(ids).logits)
        assert loaded_tok("It was great.").input_ids == tok("It was great.").input_ids
        assert loaded_tok.model_max_length == model.config.max_position_embeddings
    assert len(list((tmp_path / "cache" / "models").iterdir())) == 1  # converted once, then cached


def test_zoft_train_runs_on_a_gguf_file(gguf_file, tmp_path):
    path, _, _ = gguf_file
    assert main(["train", "--model", str(path), "--task", "sentiment-demo", "--steps", "2", "--train-size", "8",
                 "--dev-size", "4", "--test-size", "4", "--batch-size", "4", "--out", str(tmp_path / "r")]) == 0


def test_a_folder_with_two_gguf_files_asks_for_one(gguf_file, capsys):
    path, _, _ = gguf_file
    (path.parent / "other.gguf").write_bytes(path.read_bytes())
    assert main(["eval", "--model", str(path.parent), "--task", "sentiment-demo", "--test-size", "4"]) == 2
    assert "holds 2 .gguf files: name one" in capsys.readouterr().err


def test_a_file_that_is_not_gguf_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ZOFT_CACHE", str(tmp_path / "cache"))
    (tmp_path / "bad.gguf").write_bytes(b"not a gguf file at all")
    assert main(["eval", "--model", str(tmp_path / "bad.gguf"), "--task", "sentiment-demo", "--test-size", "4"]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("zoft: error:")]
    assert len(errors) == 1 and "cannot load the GGUF file" in errors[0] and "bad.gguf" in errors[0]
