"""Metrics: accuracy, SQuAD token F1 / exact match, SuperGLUE's MultiRC f1a / EM.

All metrics are fractions in [0, 1].

Answer normalisation and token F1 follow the official SQuAD v1.1 evaluation script
(Rajpurkar et al. 2016, ``evaluate-v1.1.py``): lower-case, drop punctuation, drop the
articles a/an/the, collapse whitespace; a prediction scores the maximum over the gold
answers. The ReCoRD and DROP-as-in-MeZO scores use the same functions.
MultiRC (Khashabi et al. 2018; SuperGLUE): f1a is the binary F1 of the "true" class over all
answer options; EM is the fraction of questions whose answer options are all labelled right.
"""

from __future__ import annotations

import re
import string
from collections import Counter, defaultdict
from typing import Sequence

from zoft.tasks.base import Example

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD v1.1 normalisation: lower, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    """Harmonic mean of token precision and recall after normalisation."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def best_over_gold(metric, prediction: str, golds: Sequence[str]) -> float:
    return max(metric(prediction, g) for g in golds)


def check_lengths(examples: Sequence[Example], predictions: Sequence) -> None:
    if len(examples) != len(predictions):
        raise ValueError(f"got {len(predictions)} predictions for {len(examples)} examples")


def check_index(prediction: object, example: Example) -> int:
    if isinstance(prediction, bool) or not isinstance(prediction, int) or not (
        0 <= prediction < len(example.candidates)
    ):
        raise ValueError(f"invalid prediction {prediction!r}; expected a candidate index "
                         f"in [0, {len(example.candidates)})")
    return prediction


def accuracy(examples: Sequence[Example], predictions: Sequence[int]) -> float:
    """Fraction of examples whose predicted candidate index equals the label."""
    check_lengths(examples, predictions)
    if not examples:
        raise ValueError("cannot score an empty list of examples")
    hits = 0
    for ex, pred in zip(examples, predictions):
        if ex.label is None:
            raise ValueError(f"unlabelled example cannot be scored: {ex.prompt[:60]!r}")
        hits += check_index(pred, ex) == ex.label
    return hits / len(examples)


def f1_em(golds: Sequence[Sequence[str]], predictions: Sequence[str]) -> dict[str, float]:
    """Mean over examples of the best F1 / EM against each example's gold answers."""
    if not golds:
        raise ValueError("cannot score an empty list of examples")
    for gold, pred in zip(golds, predictions):
        if not gold:
            raise ValueError("unlabelled example (no gold answers) cannot be scored")
        if not isinstance(pred, str):
            raise ValueError(f"invalid prediction {pred!r}; expected a string")
    f1 = sum(best_over_gold(token_f1, p, g) for g, p in zip(golds, predictions))
    em = sum(best_over_gold(exact_match, p, g) for g, p in zip(golds, predictions))
    return {"f1": f1 / len(golds), "em": em / len(golds)}


def multirc_scores(examples: Sequence[Example], predictions: Sequence[int]) -> dict[str, float]:
    """accuracy over answer options, f1a over all options, EM over questions (``group``)."""
    acc = accuracy(examples, predictions)
    tp = fp = fn = 0
    by_question: dict[object, bool] = defaultdict(lambda: True)
    for ex, pred in zip(examples, predictions):
        tp += pred == 1 and ex.label == 1
        fp += pred == 1 and ex.label == 0
        fn += pred == 0 and ex.label == 1
        by_question[ex.group] &= pred == ex.label
    f1a = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    return {"accuracy": acc, "f1a": f1a, "em": sum(by_question.values()) / len(by_question)}
