"""ReCoRD (Zhang et al. 2018; SuperGLUE): which passage entity fills "@placeholder"?

One Example per query; candidates are the passage's distinct entities, each as " <entity>";
the prediction is the chosen entity, scored by SQuAD F1 / EM (max over the gold answers),
as in SuperGLUE. label = index of the first candidate that is a gold answer (training target).
Template: MeZO's ``ReCoRDTemplate`` (princeton-nlp/MeZO ``large_models/templates.py``, after
PromptSource): ``'<passage>\\n<query>\\nQuestion: what is the "@placeholder"\\nAnswer:'``.
MeZO's default is the GPT-3 style ``ReCoRDTemplateGPT3`` whose candidates are whole queries
with the entity substituted; zoft uses the "Answer:" form so that a candidate *is* its entity.

Files: SuperGLUE ``ReCoRD/{train,val,test}.jsonl``: one passage per line with entity spans
(``end`` inclusive) and ``qas``. The local copy holds only the FewGLUE 32-example sets
(Schick & Schütze 2021): train falls back to ``fewglue32/train.jsonl`` and validation to
``fewglue32/dev32.jsonl``; ``load_splits`` notes both.
Hub fallback: ``aps/super_glue`` "record", whose flat rows are regrouped by passage.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from zoft.tasks.base import Example
from zoft.tasks.choice import text
from zoft.tasks.formats import FileTask
from zoft.tasks.metrics import check_index, check_lengths, f1_em

_FEWGLUE = "a FewGLUE 32-example set (Schick & Schuetze 2021); the full split is absent"


def _entities(passage: dict) -> tuple[str, ...]:
    """Distinct entity strings in passage order; spans are {start, end} with end inclusive."""
    body = text(passage, "text")
    names = []
    for e in passage["entities"]:
        name = e if isinstance(e, str) else body[e["start"]: e["end"] + 1]
        if not name.strip():
            raise ValueError(f"empty entity span {e!r}")
        if name not in names:
            names.append(name)
    return tuple(names)


class ReCoRD(FileTask):
    name = "record"
    metric_name = "f1"
    hub = ("aps/super_glue", "record")
    local_dir = "ReCoRD"
    files = {"train": ("train.jsonl", "fewglue32/train.jsonl"),
             "validation": ("val.jsonl", "fewglue32/dev32.jsonl"), "test": ("test.jsonl",)}
    fallback_reasons = {"fewglue32/train.jsonl": _FEWGLUE, "fewglue32/dev32.jsonl": _FEWGLUE}

    def example(self, record: dict) -> list[Example]:
        passage = record["passage"]
        entities = _entities(passage)
        return [self._query(passage["text"], entities, qa) for qa in record["qas"]]

    def _query(self, passage: str, entities: tuple[str, ...], qa: dict) -> Example:
        query = text(qa, "query")
        if "@placeholder" not in query:
            raise ValueError(f"query lacks '@placeholder': {query!r}")
        golds = tuple(dict.fromkeys(text(a, "text") for a in qa.get("answers", ())))
        label = None
        if golds:
            hits = [i for i, e in enumerate(entities) if e in golds]
            if not hits:
                raise ValueError(f"no gold answer {list(golds)} is among the passage entities")
            label = hits[0]
        prompt = f'{passage}\n{query}\nQuestion: what is the "@placeholder"\nAnswer:'
        return Example(prompt, tuple(" " + e for e in entities), label, golds)

    def score(self, examples: Sequence[Example], predictions: Sequence[int]) -> dict[str, float]:
        """F1 / EM of the chosen entity against the gold answers (SuperGLUE ReCoRD)."""
        check_lengths(examples, predictions)
        chosen = [ex.candidates[check_index(p, ex)].strip() for ex, p in zip(examples, predictions)]
        return f1_em([ex.answers for ex in examples], chosen)

    def from_hub(self, rows: Iterable[dict]) -> list[dict]:
        """Flat rows (passage, query, entities, answers, idx) -> one record per passage."""
        passages: dict[int, dict] = {}
        for row in rows:
            p = row["idx"]["passage"]
            rec = passages.setdefault(p, {"idx": p, "qas": [], "passage": {
                "text": row["passage"], "entities": list(row["entities"])}})
            rec["qas"].append({"query": row["query"], "idx": row["idx"]["query"],
                               "answers": [{"text": a} for a in row["answers"]]})
        return list(passages.values())
