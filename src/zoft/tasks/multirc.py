"""MultiRC (Khashabi et al. 2018; SuperGLUE): is this candidate answer to the question right?

Each (question, answer option) is one binary Example whose ``group`` is the question's idx.
Template from MeZO (princeton-nlp/MeZO ``large_models/templates.py``, ``MultiRCTemplate``,
after PromptSource): ``'<paragraph>\\nQuestion: <question>\\nI found this answer "<answer>".
Is that correct? Yes or No?\\n'`` -> ``"No"`` (label 0) / ``"Yes"`` (label 1).
Metrics: accuracy over answer options (MeZO's number), f1a and per-question EM (SuperGLUE).
Files: SuperGLUE ``MultiRC/{train,val,test}.jsonl``, one paragraph per line; the local copy
has no train.jsonl (``load_splits`` then splits val.jsonl by paragraph, see zoft.tasks.data).
Hub fallback: ``aps/super_glue`` "multirc", whose flat rows are regrouped by paragraph.
Answer options may be empty strings (the official test.jsonl has one, idx 2319).
"""

from __future__ import annotations

from typing import Iterable, Sequence

from zoft.tasks.base import Example
from zoft.tasks.choice import ChoiceTask, text
from zoft.tasks.formats import label_index
from zoft.tasks.metrics import multirc_scores


class MultiRC(ChoiceTask):
    name = "multirc"
    hub = ("aps/super_glue", "multirc")
    local_dir = "MultiRC"
    verbalizer = ("No", "Yes")
    label_values = (0, 1)

    def example(self, record: dict) -> list[Example]:
        paragraph = text(record["passage"], "text")
        return [self._option(paragraph, q, a)
                for q in record["passage"]["questions"] for a in q["answers"]]

    def _option(self, paragraph: str, question: dict, option: dict) -> Example:
        prompt = (f'{paragraph}\nQuestion: {text(question, "question")}\nI found this answer '
                  f'"{text(option, "text", allow_empty=True)}". Is that correct? Yes or No?\n')
        label = option.get("label")
        index = None if label is None else label_index(label, self.label_values)
        return Example(prompt, self.verbalizer, index, group=_question_id(question))

    def score(self, examples: Sequence[Example], predictions: Sequence[int]) -> dict[str, float]:
        return multirc_scores(examples, predictions)

    def from_hub(self, rows: Iterable[dict]) -> list[dict]:
        """Flat rows (paragraph, question, answer, idx, label) -> one record per paragraph."""
        paragraphs: dict[int, dict] = {}
        questions: dict[tuple[int, int], dict] = {}
        for row in rows:
            p, q, a = row["idx"]["paragraph"], row["idx"]["question"], row["idx"]["answer"]
            par = paragraphs.setdefault(
                p, {"idx": p, "passage": {"text": row["paragraph"], "questions": []}})
            if (p, q) not in questions:
                questions[p, q] = {"question": row["question"], "idx": q, "answers": []}
                par["passage"]["questions"].append(questions[p, q])
            answer = {"text": row["answer"], "idx": a}
            if row.get("label", -1) != -1:
                answer["label"] = row["label"]
            questions[p, q]["answers"].append(answer)
        return list(paragraphs.values())


def _question_id(question: dict) -> int:
    idx = question["idx"]
    if isinstance(idx, bool) or not isinstance(idx, int):
        raise ValueError(f"question idx must be an integer, got {idx!r}")
    return idx
