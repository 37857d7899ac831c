"""RTE (Dagan et al. 2006 and successors; SuperGLUE): two-way textual entailment.

Template from MeZO (princeton-nlp/MeZO ``large_models/templates.py``, ``RTETemplate``, after
PromptSource): ``'<premise>\\nDoes this mean that "<hypothesis>" is true? Yes or No?\\n'``
-> ``"Yes"`` (entailment) / ``"No"`` (not_entailment).
Files: SuperGLUE ``RTE/{train,val,test}.jsonl``; test is unlabelled.
"""

from __future__ import annotations

from zoft.tasks.choice import ChoiceTask, text


class RTE(ChoiceTask):
    name = "rte"
    hub = ("aps/super_glue", "rte")
    local_dir = "RTE"
    verbalizer = ("Yes", "No")
    label_values = ("entailment", "not_entailment")

    def prompt(self, record: dict) -> str:
        premise, hypothesis = text(record, "premise"), text(record, "hypothesis")
        return f'{premise}\nDoes this mean that "{hypothesis}" is true? Yes or No?\n'
