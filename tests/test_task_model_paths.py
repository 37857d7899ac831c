"""Every task's examples through the model: collate, loss, prediction / greedy decoding, metric.

Reuses the hand-written official-format rows of test_tasks.py (one row per task)."""

from __future__ import annotations

import math

import pytest
import torch

from test_tasks import ROWS
from zoft.tasks import load_splits
from zoft.models import load_model
from zoft.tasks import get_task
from zoft.train.objective import Objective, collate, greedy_answers


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-llama")


@pytest.mark.parametrize("name", sorted(ROWS))
def test_task_runs_through_the_model(tiny, name):
    model, tok = tiny
    task, ex = get_task(name), ROWS[name].expected
    if ex is None:  # the built-in task has no hand-written row: take its first training example
        ex = load_splits(name, train_size=4, dev_size=2, test_size=2).train[0]
    generation = task.kind == "generation"
    batch = collate(tok, [ex, ex], max_length=256, generation=generation)
    objective = Objective(model, generation=generation)
    with torch.no_grad():
        loss = float(objective.loss(batch))
    assert math.isfinite(loss) and loss > 0
    if generation:
        preds = greedy_answers(model, tok, [ex.prompt], max_new_tokens=3)
        metrics = task.score([ex], preds)
    else:
        assert batch.sizes.tolist() == [len(ex.candidates)] * 2
        preds, loss_sum = objective.predict(batch)
        assert preds[0] == preds[1] and 0 <= preds[0] < len(ex.candidates)
        assert loss_sum == pytest.approx(2 * loss, rel=1e-5)  # the same loss, from the same forward
        metrics = task.score([ex, ex], preds)
    assert next(iter(metrics)) == task.metric_name and 0.0 <= metrics[task.metric_name] <= 1.0
