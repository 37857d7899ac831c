"""COPA (Roemmele et al. 2011; SuperGLUE): choose the more plausible cause or effect.

Template from MeZO (princeton-nlp/MeZO ``large_models/templates.py``, ``CopaTemplate``,
capitalization "correct"): the premise without its final period, then " so" (effect) or
" because" (cause); the two candidates are the choices with a lower-cased first word
(except "I"): ``"My body cast a shadow over the grass because"`` ->
``" the sun was rising."`` / ``" the grass was cut."``. MeZO's trailing space after the
conjunction is moved onto the candidates (prompt + candidate is MeZO's text unchanged).
Files: SuperGLUE ``COPA/{train,val,test}.jsonl``; label 0 / 1 = choice1 / choice2.
"""

from __future__ import annotations

from zoft.tasks.base import Example
from zoft.tasks.choice import ChoiceTask, text
from zoft.tasks.formats import label_index

_CONJUNCTIONS = {"effect": " so", "cause": " because"}


def _lower_first_word(choice: str) -> str:
    first, _, rest = choice.strip().partition(" ")
    first = first if first == "I" else first.lower()
    return f"{first} {rest}" if rest else first


class COPA(ChoiceTask):
    name = "copa"
    hub = ("aps/super_glue", "copa")
    local_dir = "COPA"
    label_values = (0, 1)

    def prompt(self, record: dict) -> str:
        question = record["question"]
        if question not in _CONJUNCTIONS:
            raise ValueError(f"invalid question {question!r}; expected 'cause' or 'effect'")
        premise = text(record, "premise").rstrip()
        return premise.removesuffix(".") + _CONJUNCTIONS[question]

    def example(self, record: dict) -> Example:
        choices = (text(record, "choice1"), text(record, "choice2"))
        label = record.get("label")
        return Example(self.prompt(record), tuple(" " + _lower_first_word(c) for c in choices),
                       None if label is None else label_index(label, self.label_values))
