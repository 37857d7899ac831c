"""Learning-rate schedules: the factor's shape, every optimizer's groups, errors, resume."""

from __future__ import annotations

import json
import math

import pytest
import torch

from zoft import make_optimizer
from zoft.optim.schedule import lr_factor, set_lr_factor
from zoft.train.loop import train
from test_train import config, final_weights


def test_factors_warm_up_then_decay_to_zero():
    assert [lr_factor("constant", t, 10, 3) for t in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    linear = [lr_factor("linear", t, 10, 2) for t in range(11)]
    assert linear[:3] == [1 / 3, 2 / 3, 1.0] and linear[-1] == 0.0
    assert all(a >= b for a, b in zip(linear[2:], linear[3:]))
    cosine = [lr_factor("cosine", t, 8) for t in range(9)]
    assert cosine[0] == 1.0 and cosine[4] == pytest.approx(0.5) and cosine[8] == pytest.approx(0.0)
    assert lr_factor("cosine", 2, 8) == pytest.approx((1 + math.cos(math.pi / 4)) / 2)


def test_a_decaying_schedule_accepts_zero_steps_as_a_zero_shot_cell_runs():
    from zoft.optim.schedule import check_schedule

    check_schedule("linear", 0, 0)  # no step runs, so no lr is used


@pytest.mark.parametrize("name, warmup, total, match", [
    ("step", 0, 10, "unknown lr schedule 'step'"), ("linear", 10, 10, "below steps"),
    ("cosine", -1, 10, "warmup_steps"),
])
def test_bad_schedules_are_named(name, warmup, total, match):
    with pytest.raises(ValueError, match=match):
        lr_factor(name, 0, total, warmup)


@pytest.mark.parametrize("name", ["zo-sgd", "zo-adam", "jaguar-sign", "zo-muon", "fo-adam"])
def test_every_group_lr_is_scaled_from_its_own_base(name):
    a, b = torch.nn.Parameter(torch.ones(3, 3)), torch.nn.Parameter(torch.ones(3))
    extra = {"fallback_lr": 1e-4} if name == "zo-muon" else {}
    opt = make_optimizer(name, [{"params": [a]}, {"params": [b], "lr": 0.5}], lr=1.0, **extra)
    set_lr_factor(opt, 0.25)
    set_lr_factor(opt, 0.5)  # from the base, not compounded
    assert [g["lr"] for g in opt.param_groups] == [0.5, 0.25]
    if extra:
        assert opt.param_groups[0]["fallback_lr"] == pytest.approx(5e-5)


@pytest.mark.parametrize("optimizer", ["zo-sgd", "fo-adam"])
def test_a_scheduled_run_logs_its_lr_and_resumes_bit_identically(tmp_path, optimizer):
    kw = dict(optimizer=optimizer, lr=1e-2, steps=6, save_every=3, lr_schedule="cosine", warmup_steps=2)
    train(config(tmp_path / "a", **kw))
    piece = config(tmp_path / "b", forward_budget=6 if optimizer == "zo-sgd" else 3, **kw)
    train(piece)  # stops after 3 steps (ZO-SGD: 2 passes per step; FO: 1)
    piece.forward_budget = 0
    train(piece, resume=True)
    a, b = final_weights(tmp_path / "a" / "run"), final_weights(tmp_path / "b" / "run")
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(r) for r in (tmp_path / "b" / "run" / "metrics.jsonl").read_text().splitlines()]
    expected = [1e-2 * lr_factor("cosine", t, 6, 2) for t in range(6)]
    assert [r["lr"] for r in rows if "lr" in r] == pytest.approx(expected)


def test_cli_rejects_an_unknown_schedule(tmp_path, capsys):
    from zoft.cli import main

    code = main(["train", "--model", "tiny-llama", "--lr-schedule", "steps", "--out", str(tmp_path / "r")])
    assert code != 0 and "unknown lr schedule 'steps'" in capsys.readouterr().err


def test_a_bare_train_command_takes_the_first_run_preset_and_flags_do_not():
    from zoft.cli import FIRST_RUN, build_parser, config_from_args

    bare = config_from_args(build_parser().parse_args(["train", "--out", "runs/x"]))
    assert {k: getattr(bare, k) for k in FIRST_RUN} == FIRST_RUN and bare.out == "runs/x"
    flagged = config_from_args(build_parser().parse_args(["train", "--lr", "1e-4"]))
    assert flagged.lr_schedule == "constant" and flagged.steps == 200 and not flagged.eval_zero_shot


def test_zero_shot_is_scored_first_and_is_the_first_best_dev_candidate(tmp_path):
    summary = train(config(tmp_path, steps=2, eval_every=2, eval_zero_shot=True))
    rows = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    dev = [r for r in rows if "dev_accuracy" in r]
    assert [r["step"] for r in dev] == [0, 2]
    assert summary["zero_shot"]["dev_metric"] == dev[0]["dev_accuracy"]
    assert summary["best_dev_metric"] == max(r["dev_accuracy"] for r in dev)
    assert 0.0 <= summary["zero_shot"]["test_metric"] <= 1.0
    assert "zero-shot -> trained" in (tmp_path / "run" / "train.log").read_text()
