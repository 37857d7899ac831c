"""Non-differentiable objectives (--objective accuracy | f1 | python:MODULE:FUNCTION): ZO trains
on the metric of the perturbed model's predictions."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch

from zoft.core.types import NonFiniteLossError
from zoft.train.config import TrainConfig
from zoft.train.loop import take_step
from zoft.train.objective import Objective, error_rate, one_minus_f1
from zoft.train.session import Session

TINY = dict(model="tiny-llama", task="sentiment-demo", train_size=32, dev_size=8, test_size=8,
            batch_size=32, max_length=64, log_every=1, dtype="fp32")


def session(tmp_path, **kw) -> Session:
    return Session.build(TrainConfig(**{**TINY, "out": str(tmp_path / "run"), **kw}), log=lambda m: None)


def test_metric_values():
    assert error_rate([1, 0, 1, 1], [1, 1, 1, 0]) == 0.5
    assert one_minus_f1([0, 1, 0, 1], [0, 1, 0, 1]) == 0.0
    # class 0: tp 1, fp 1, fn 1 -> 0.5; class 1: tp 1, fp 1, fn 1 -> 0.5
    assert one_minus_f1([0, 0, 1, 1], [0, 1, 0, 1]) == pytest.approx(0.5)
    assert one_minus_f1([1, 1, 1, 1], [1, 1, 1, 0]) == pytest.approx(1 - (0 + 6 / 7) / 2)


def test_accuracy_objective_is_the_error_rate_of_the_predictions(tmp_path):
    s = session(tmp_path, optimizer="zo-sgd", objective="accuracy")
    batch = s.batch(list(s.splits.train))
    preds, _ = s.objective.predict(batch)
    labels = [int(y) for y in batch.labels]
    assert float(s.objective.loss(batch)) == pytest.approx(error_rate(preds, labels))
    assert 0.0 < error_rate(preds, labels) < 1.0  # the check below is not vacuous
    # evaluation still reports the cross-entropy
    assert s.evaluate(list(s.splits.train))["loss"] == pytest.approx(
        float(Objective(s.model, bucket_positions=s.objective.bucket_positions).loss(batch)), abs=1e-5)


def test_zo_on_the_accuracy_objective_raises_the_accuracy(tmp_path):
    """30 ZO-SGD steps on 1 - accuracy of one batch of 32 (lr 1, eps 0.3, q 4, full tuning of
    the tiny model): the training accuracy rises from 15/32 (measured: to 20/32)."""
    s = session(tmp_path, optimizer="zo-sgd", peft="full", objective="accuracy", lr=1.0, eps=0.3, q=4)
    examples = list(s.splits.train)
    before = s.evaluate(examples)["accuracy"]
    batch = s.batch(examples)
    for _ in range(30):
        take_step(s, [batch])
    assert s.evaluate(examples)["accuracy"] >= before + 3 / 32


@pytest.mark.parametrize("optimizer", ["fo-adam", "forward-grad"])
def test_a_metric_objective_with_a_gradient_optimizer_is_an_error(tmp_path, optimizer):
    with pytest.raises(ValueError, match=f"--objective accuracy is not differentiable; {optimizer} needs gradients"):
        session(tmp_path, optimizer=optimizer, objective="accuracy")


@pytest.mark.parametrize("objective, message", [
    ("bogus", "invalid objective 'bogus'; allowed: loss, accuracy, f1 or python:MODULE:FUNCTION"),
    ("python:only", "a user objective is python:MODULE:FUNCTION"),
    ("python:no_such_module_zoft:f", "cannot import f from no_such_module_zoft"),
])
def test_bad_objective_names_are_one_line_errors(tmp_path, objective, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{**TINY, "out": str(tmp_path / "run"), "objective": objective})


def test_generation_tasks_train_on_their_loss():
    with pytest.raises(ValueError, match="objective 'accuracy' is for classification and multiple choice"):
        Objective(torch.nn.Linear(1, 1), generation=True, target="accuracy")


def test_a_user_objective_from_a_module(tmp_path, monkeypatch):
    (tmp_path / "my_metric.py").write_text(textwrap.dedent("""
        calls = []
        def always_one(preds, labels):
            calls.append(len(preds))
            return 1.0
        def nan(preds, labels):
            return float("nan")
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    s = session(tmp_path, optimizer="zo-sgd", objective="python:my_metric:always_one")
    batch = s.batch(list(s.splits.train))
    assert float(s.objective.loss(batch)) == 1.0 and sys.modules["my_metric"].calls == [32]
    s = session(tmp_path, optimizer="zo-sgd", objective="python:my_metric:nan")
    with pytest.raises(NonFiniteLossError, match="objective python:my_metric:nan returned nan"):
        take_step(s, [s.batch(list(s.splits.train))])
