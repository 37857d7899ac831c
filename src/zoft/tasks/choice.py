"""``ChoiceTask``: classification with a fixed verbalizer (one candidate per label value).

A subclass gives ``prompt(record)``, the ``verbalizer`` (candidate continuations) and
``label_values`` (the raw label of each candidate, as written in the official files).
``prompt + candidates[i]`` is exactly the text MeZO's template scores for label i
(Malladi et al. 2023, princeton-nlp/MeZO ``large_models/templates.py``).
"""

from __future__ import annotations

from typing import Sequence

from zoft.tasks.base import Example
from zoft.tasks.formats import FileTask, label_index
from zoft.tasks.metrics import accuracy

SUPERGLUE_FILES = {"train": ("train.jsonl",), "validation": ("val.jsonl",), "test": ("test.jsonl",)}


def text(record: dict, key: str, allow_empty: bool = False) -> str:
    """``record[key]``, which must be a string (a non-empty one unless ``allow_empty``)."""
    value = record[key]
    if not isinstance(value, str) or not (allow_empty or value.strip()):
        kind = "a string" if allow_empty else "a non-empty string"
        raise ValueError(f"field {key!r} must be {kind}, got {value!r}")
    return value


class ChoiceTask(FileTask):
    """One Example per record; its label is the index of the record's label value."""

    verbalizer: tuple[str, ...] = ()
    label_values: tuple = ()
    hub_labels: tuple = ()  # official label value of each Hugging Face ClassLabel index
    files = SUPERGLUE_FILES

    def prompt(self, record: dict) -> str:
        raise NotImplementedError

    def example(self, record: dict) -> Example:
        label = record.get("label")
        index = None if label is None else label_index(label, self.label_values)
        return Example(self.prompt(record), self.verbalizer, index)

    def score(self, examples: Sequence[Example], predictions: Sequence[int]) -> dict[str, float]:
        return {"accuracy": accuracy(examples, predictions)}

    def hub_record(self, row: dict) -> dict:
        """Hugging Face rows store the label as a class index, -1 when unlabelled."""
        label = row.pop("label", -1)
        if label != -1:
            row["label"] = (self.hub_labels or self.label_values)[label]
        return row
