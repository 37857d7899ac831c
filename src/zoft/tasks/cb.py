"""CommitmentBank (de Marneffe et al. 2019; SuperGLUE): three-way entailment.

Template from MeZO (princeton-nlp/MeZO ``large_models/templates.py``, ``CBTemplate``, after
PromptSource): ``'Suppose <premise> Can we infer that "<hypothesis>"? Yes, No, or Maybe?\\n'``
-> ``"Yes"`` (entailment) / ``"No"`` (contradiction) / ``"Maybe"`` (neutral).
Files: SuperGLUE ``CB/{train,val,test}.jsonl``; test is unlabelled.
"""

from __future__ import annotations

from zoft.tasks.choice import ChoiceTask, text


class CB(ChoiceTask):
    name = "cb"
    hub = ("aps/super_glue", "cb")
    local_dir = "CB"
    verbalizer = ("Yes", "No", "Maybe")
    label_values = ("entailment", "contradiction", "neutral")

    def prompt(self, record: dict) -> str:
        premise, hypothesis = text(record, "premise"), text(record, "hypothesis")
        return f'Suppose {premise} Can we infer that "{hypothesis}"? Yes, No, or Maybe?\n'
