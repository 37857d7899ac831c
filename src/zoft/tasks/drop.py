"""DROP (Dua et al. 2019): discrete reasoning over paragraphs, scored as generation.

Template from MeZO (princeton-nlp/MeZO ``large_models/templates.py``, ``DROPTemplate``):
``"Passage: <passage>\\nQuestion: <question>\\nAnswer:"``. As in MeZO the gold answers are
the Hugging Face ``answers_spans.spans`` strings (each span of a multi-span answer is its own
gold string) and the score is SQuAD F1 / EM, max over golds, not DROP's bag-of-spans metric.
``answers`` carry a leading space (see zoft.tasks.squad).
Files: the official ``DROP/drop_dataset_train.json`` and ``drop_dataset_dev.json``
(passage id -> {passage, qa_pairs}), flattened to one record per question in the Hugging
Face shape; an official answer gives its number, else its date as "day month year" (the
official evaluation's string form), else its spans; ``validated_answers`` add more golds.
No local copy ships with zoft's data folder; hub fallback ``ucinlp/drop``.
"""

from __future__ import annotations

from pathlib import Path

from zoft.tasks.base import Example
from zoft.tasks.choice import text
from zoft.tasks.formats import Located, fail, read_json
from zoft.tasks.squad import GenerationTask, gold_strings, json_items


def answer_strings(answer: dict) -> list[str]:
    """One official DROP answer -> its gold strings (number, date, or spans)."""
    if not isinstance(answer, dict):
        raise ValueError(f"answer must be a JSON object, got {answer!r}")
    if str(answer.get("number", "")).strip():
        return [str(answer["number"])]
    date = answer.get("date") or {}
    day_month_year = " ".join(str(date.get(k, "")) for k in ("day", "month", "year")).split()
    if day_month_year:
        return [" ".join(day_month_year)]
    return list(answer.get("spans") or [])


class DROP(GenerationTask):
    name = "drop"
    hub = ("ucinlp/drop", None)
    local_dir = "DROP"
    files = {"train": ("drop_dataset_train.json",), "validation": ("drop_dataset_dev.json",)}

    def read(self, path: Path) -> Located:
        data = read_json(path)
        if not isinstance(data, dict) or not data:
            raise fail(path, "line 1", "expected a non-empty JSON object of passages (DROP)")
        rows = []
        for pid, item in data.items():
            for k, qa in json_items(path, f"{pid}.", item, "qa_pairs"):
                where = f"{pid}.qa_pairs[{k}]"
                try:
                    golds = [s for a in [qa.get("answer")] + list(qa.get("validated_answers", []))
                             if a for s in answer_strings(a)]
                except (ValueError, TypeError) as e:
                    raise fail(path, where, str(e)) from None
                rows.append((where, {"section_id": pid, "query_id": qa.get("query_id"),
                                     "passage": item.get("passage"), "question": qa.get("question"),
                                     "answers_spans": {"spans": golds}}))
        return rows

    def example(self, record: dict) -> Example:
        passage, question = text(record, "passage"), text(record, "question").strip()
        prompt = f"Passage: {passage}\nQuestion: {question}\nAnswer:"
        return Example(prompt, answers=gold_strings(record["answers_spans"]["spans"]))
