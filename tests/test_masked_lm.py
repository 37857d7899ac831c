"""Masked language models (RoBERTa): candidates scored at mask positions, every scheme trains,
the export loads with AutoModelForMaskedLM, a saved checkpoint folder is recognised."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForMaskedLM

from zoft.cli import main
from zoft.models import is_masked_lm, load_model
from zoft.peft import apply_peft
from zoft.tasks import Example
from zoft.train import checkpoint
from zoft.train.config import TrainConfig
from zoft.train.loop import train
from zoft.train.objective import Objective, collate, masked_rows
from zoft.train.session import Session

SST = [Example("A gem. It was", (" terrible", " great"), 1), Example("Dull and long. It was", (" terrible", " great"), 0),
       Example("Fine. It was", (" bad", " fab"), 1)]


@pytest.fixture(scope="module")
def roberta():
    return load_model("tiny-roberta")


def test_tiny_roberta_is_a_masked_lm_with_a_mask_token(roberta):
    model, tok = roberta
    assert is_masked_lm(model) and type(model).__name__ == "RobertaForMaskedLM"
    assert tok.mask_token_id == 258 and tok.decode([tok.mask_token_id]) == "<mask>"
    assert not is_masked_lm(load_model("tiny-llama")[0])
    assert is_masked_lm(apply_peft(load_model("tiny-roberta")[0], "lora"))  # through the peft wrapper


def test_masked_rows_put_one_mask_per_candidate_token_after_the_prompt(roberta):
    _, tok = roberta
    rows = masked_rows(tok, Example("Hi. It was", (" ok", " great")), 64, tok.mask_token_id)
    prompt = tok("Hi. It was", add_special_tokens=False)["input_ids"]
    for (ids, cols, targets), cand in zip(rows, (" ok", " great")):
        tail = tok(cand, add_special_tokens=False)["input_ids"]
        assert ids == prompt + [tok.mask_token_id] * len(tail) and cols == list(range(len(prompt), len(ids)))
        assert targets == tail
    # equal-length candidates share one row; different lengths get one row each
    assert collate(tok, [SST[2]], mask_token_id=tok.mask_token_id).input_ids.shape[0] == 1
    assert collate(tok, [SST[0]], mask_token_id=tok.mask_token_id).input_ids.shape[0] == 2
    # the prompt is truncated from the left, the masks kept
    ids, cols, _ = masked_rows(tok, Example("x" * 100 + " It was", (" ok",)), 20, tok.mask_token_id)[0]
    assert len(ids) == 20 and ids[-3:] == [tok.mask_token_id] * 3
    with pytest.raises(ValueError, match="no room"):
        masked_rows(tok, Example("Hi", (" a long candidate",)), 8, tok.mask_token_id)
    with pytest.raises(ValueError, match="cannot train a generation task"):
        collate(tok, [Example("Q?", (), None, ("A",))], generation=True, mask_token_id=tok.mask_token_id)


def test_scores_are_the_mean_log_prob_of_the_candidate_tokens_at_the_masks(roberta):
    model, tok = roberta
    batch = collate(tok, SST, max_length=64, mask_token_id=tok.mask_token_id)
    scores = Objective(model).sequence_scores(batch)
    expected = []
    for ex in SST:
        for ids, cols, targets in masked_rows(tok, ex, 64, tok.mask_token_id):
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
            expected.append(torch.stack([logp[c, t] for c, t in zip(cols, targets)]).mean())
    torch.testing.assert_close(scores, torch.stack(expected), rtol=1e-5, atol=1e-5)


def test_prefix_real_init_holds_the_encoders_key_and_value_projections(roberta):
    model = apply_peft(load_model("tiny-roberta")[0], "prefix", prefix_tokens=3)
    weight = model.prompt_encoder[model.active_adapter].embedding.weight  # (n, L * 2 * hidden)
    base = model.get_base_model()
    ids = torch.randint(0, 259, (1, 3), generator=torch.Generator().manual_seed(0))
    seen = {}
    attn = base.roberta.encoder.layer[1].attention.self
    hook = attn.value.register_forward_hook(lambda m, a, out: seen.setdefault("v", out))
    with torch.no_grad():
        base(input_ids=ids)
    hook.remove()
    layer1_value = weight.reshape(3, 2, 2, 64)[:, 1, 1]  # (n, layer 1, value, hidden)
    torch.testing.assert_close(layer1_value, seen["v"][0])


def run_cfg(tmp_path, peft: str, optimizer: str = "zo-sgd", **kw) -> TrainConfig:
    base = dict(model="tiny-roberta", task="sentiment-demo", peft=peft, optimizer=optimizer, steps=30,
                batch_size=8, train_size=16, dev_size=8, test_size=8, max_length=48, eval_every=0,
                dtype="fp32", out=str(tmp_path / f"{peft}-{optimizer}"))
    return TrainConfig(**{**base, **kw})


def train_loss(cfg: TrainConfig, state=None) -> float:
    session = Session.build(cfg, log=lambda m: None, train=False)
    if state is not None:
        checkpoint.load_weights(state, session.model)
    return float(session.objective.loss(session.batch(session.splits.train)))


@pytest.mark.parametrize("peft, lr", [("full", 1e-3), ("lora", 1e-2), ("prefix", 1.0), ("prompt", 1e-1)])
def test_zo_training_lowers_the_training_loss_of_every_scheme(tmp_path, peft, lr):
    cfg = run_cfg(tmp_path, peft, lr=lr, eps=1e-2)
    before = train_loss(cfg)
    assert train(cfg)["status"] == "finished"
    weights = checkpoint.read_manifest(tmp_path / f"{peft}-zo-sgd" / checkpoint.MANIFEST)["weights"]
    after = train_loss(cfg, tmp_path / f"{peft}-zo-sgd" / weights)
    assert after < before - 0.01, (before, after)


def test_fo_adam_trains_a_masked_lm_too(tmp_path):
    cfg = run_cfg(tmp_path, "lora", optimizer="fo-adam", lr=1e-2, steps=10)
    before = train_loss(cfg)
    assert train(cfg)["status"] == "finished"
    weights = checkpoint.read_manifest(tmp_path / "lora-fo-adam" / checkpoint.MANIFEST)["weights"]
    assert train_loss(cfg, tmp_path / "lora-fo-adam" / weights) < before - 0.05


def test_a_generation_task_is_refused_with_one_line(tmp_path, capsys):
    code = main(["train", "--model", "tiny-roberta", "--train-file", "examples/qa.jsonl", "--steps", "1",
                 "--out", str(tmp_path / "g")])
    err = capsys.readouterr().err
    assert code != 0 and "masked language model" in err and "cannot generate" in err


def test_export_merges_lora_into_a_folder_automodelformaskedlm_loads(tmp_path):
    run = tmp_path / "run"
    cfg = run_cfg(tmp_path, "lora", lr=1e-1, steps=3, eval_every=3, out=str(run))
    assert train(cfg)["status"] == "finished"
    zoft_model = apply_peft(load_model("tiny-roberta")[0], "lora")
    checkpoint.load_weights(run / checkpoint.BEST, zoft_model)
    assert main(["export", str(run), "--out", str(tmp_path / "out")]) == 0
    exported = AutoModelForMaskedLM.from_pretrained(tmp_path / "out").eval()
    ids = torch.tensor([[72, 105, 46, 32, 258, 258]])
    with torch.no_grad():
        torch.testing.assert_close(exported(input_ids=ids).logits, zoft_model.eval()(input_ids=ids).logits,
                                   rtol=1e-4, atol=1e-4)  # merging rounds B A into W


def test_a_saved_masked_lm_folder_loads_as_a_masked_lm(tmp_path, roberta):
    model, tok = roberta
    model.save_pretrained(tmp_path / "mlm")
    tok.save_pretrained(tmp_path / "mlm")
    assert json.loads((tmp_path / "mlm" / "config.json").read_text())["architectures"] == ["RobertaForMaskedLM"]
    loaded, loaded_tok = load_model(str(tmp_path / "mlm"))
    assert is_masked_lm(loaded) and loaded_tok.mask_token_id == tok.mask_token_id
    ids = torch.tensor([[72, 105, 258]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits)
