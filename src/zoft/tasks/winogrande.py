"""WinoGrande (Sakaguchi et al. 2020): fill the blank "_" with one of two options.

MeZO (princeton-nlp/MeZO ``large_models/templates.py``, ``WinograndeTemplate``) scores the
whole sentence with "_" replaced by each option. Partial scoring (Trinh & Le 2018; GPT-3)
would score only the shared suffix after each substituted prefix, but that needs one prompt
per candidate, which the Example contract (one prompt, several continuations) cannot hold.
zoft therefore uses: prompt = the sentence up to the blank (trailing space removed),
candidates = (space +) option + the rest of the sentence:
``"Sarah was a much better surgeon than Maria so"`` -> ``" Sarah always got the easier cases."``
/ ``" Maria always got the easier cases."``. prompt + candidate is MeZO's full sentence.

Files (allenai/winogrande v1.1): ``WinoGrande/train_{xs,s,m,l,xl}.jsonl``, ``dev.jsonl``,
``test.jsonl`` (unlabelled), each labelled file with a ``<name>-labels.lst`` of "1"/"2" per
row; the labels file must agree with the rows' ``answer`` fields. Train is ``train_xl``
(the hub config ``winogrande_xl``); the local copy lacks train_xl.jsonl, so train_l.jsonl
(its first 10,234 rows) is used and ``load_splits`` notes it.
"""

from __future__ import annotations

from pathlib import Path

from zoft.tasks.base import Example
from zoft.tasks.choice import ChoiceTask, text
from zoft.tasks.formats import Located, fail, label_index, read_jsonl, read_labels

_ANSWERS = ("1", "2")


class WinoGrande(ChoiceTask):
    name = "winogrande"
    hub = ("allenai/winogrande", "winogrande_xl")
    local_dir = "WinoGrande"
    files = {"train": ("train_xl.jsonl", "train_l.jsonl"), "validation": ("dev.jsonl",),
             "test": ("test.jsonl",)}
    fallback_reasons = {"train_l.jsonl": "train_l holds the first 10,234 of train_xl's 40,398 rows"}
    label_values = _ANSWERS

    def read(self, path: Path) -> Located:
        """The rows, with ``answer`` taken from the labels file when there is one."""
        rows = read_jsonl(path)
        labels_path = path.with_name(f"{path.stem}-labels.lst")
        if not labels_path.is_file():
            return rows
        labels = read_labels(labels_path, len(rows), path, _ANSWERS)
        for n, ((where, record), label) in enumerate(zip(rows, labels), start=1):
            if record.get("answer", label) != label:
                raise fail(labels_path, f"line {n}", f"label {label!r} disagrees with "
                           f"answer {record['answer']!r} at {where} of {path.name}")
            record["answer"] = label
        return rows

    def example(self, record: dict) -> Example:
        sentence = text(record, "sentence")
        if sentence.count("_") != 1:
            raise ValueError(f"sentence must contain exactly one blank '_': {sentence!r}")
        prefix, suffix = sentence.split("_")
        space = " " if prefix.endswith(" ") else ""
        options = (text(record, "option1"), text(record, "option2"))
        answer = record.get("answer") or None  # the hub marks unlabelled rows with ""
        return Example(prefix.rstrip(), tuple(space + o.strip() + suffix for o in options),
                       None if answer is None else label_index(answer, self.label_values))

    def hub_record(self, row: dict) -> dict:
        return row
