"""SQuAD v1.1 (Rajpurkar et al. 2016): extractive question answering, scored as generation.

Template from MeZO (princeton-nlp/MeZO ``large_models/templates.py``, ``SQuADv2Template``,
used for SQuAD): ``"Title: <title>\\nContext: <context>\\nQuestion: <question>\\nAnswer:"``.
``answers`` are the distinct gold strings, each with a leading space like a candidate, so that
``prompt + answers[0]`` is the training text; F1 / EM normalise whitespace away.
Files: the official ``SQuAD/train-v1.1.json`` and ``dev-v1.1.json`` (nested
data -> paragraphs -> qas), flattened to one record per question in the Hugging Face shape
``{id, title, context, question, answers: {text: [...]}}``. No local copy ships with zoft's
data folder; hub fallback ``rajpurkar/squad`` (the id ``squad`` redirects there).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from zoft.tasks.base import Example
from zoft.tasks.choice import text
from zoft.tasks.formats import FileTask, Located, fail, read_json
from zoft.tasks.metrics import check_lengths, f1_em


def gold_strings(answers: Sequence[object]) -> tuple[str, ...]:
    """Distinct non-empty gold strings, each with one leading space."""
    for a in answers:
        if not isinstance(a, str):
            raise ValueError(f"gold answer must be a string, got {a!r}")
    return tuple(dict.fromkeys(" " + a.strip() for a in answers if a.strip()))


class GenerationTask(FileTask):
    """Generation: predictions are strings, scored by SQuAD F1 / EM over the gold answers."""

    kind = "generation"
    metric_name = "f1"

    def score(self, examples: Sequence[Example], predictions: Sequence[str]) -> dict[str, float]:
        check_lengths(examples, predictions)
        return f1_em([ex.answers for ex in examples], predictions)


class SQuAD(GenerationTask):
    name = "squad"
    hub = ("rajpurkar/squad", None)
    local_dir = "SQuAD"
    files = {"train": ("train-v1.1.json",), "validation": ("dev-v1.1.json",)}

    def read(self, path: Path) -> Located:
        data = read_json(path)
        rows = []
        for i, article in json_items(path, "", data, "data"):
            for j, par in json_items(path, f"data[{i}].", article, "paragraphs"):
                for k, qa in json_items(path, f"data[{i}].paragraphs[{j}].", par, "qas"):
                    answers = qa.get("answers", [])
                    texts = [a.get("text") if isinstance(a, dict) else a for a in answers] \
                        if isinstance(answers, list) else answers
                    rows.append((f"data[{i}].paragraphs[{j}].qas[{k}]", {
                        **qa, "title": article.get("title"), "context": par.get("context"),
                        "answers": {"text": texts}}))
        if not rows:
            raise fail(path, "line 1", "no questions found")
        return rows

    def example(self, record: dict) -> Example:
        golds = record["answers"]["text"]
        prompt = (f"Title: {text(record, 'title')}\nContext: {text(record, 'context')}\n"
                  f"Question: {text(record, 'question').strip()}\nAnswer:")
        return Example(prompt, answers=gold_strings(golds if isinstance(golds, list) else [golds]))


def json_items(path: Path, where: str, parent: object, key: str) -> list[tuple[int, dict]]:
    """The list ``parent[key]`` of JSON objects, or a ValueError naming where it breaks."""
    items = parent.get(key) if isinstance(parent, dict) else None
    if not isinstance(items, list):
        raise fail(path, where + key, f"expected a list under {key!r}")
    for n, item in enumerate(items):
        if not isinstance(item, dict):
            raise fail(path, f"{where}{key}[{n}]", f"expected a JSON object, got {type(item).__name__}")
    return list(enumerate(items))
