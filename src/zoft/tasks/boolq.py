"""BoolQ (Clark et al. 2019; SuperGLUE): yes/no questions about a Wikipedia passage.

Template from MeZO (princeton-nlp/MeZO ``large_models/templates.py``, ``BoolQTemplateV3``,
MeZO's default for BoolQ): ``"<passage> <Question>?\\n"`` (question capitalised, "?" added)
-> ``"Yes"`` (label true) / ``"No"`` (label false).
Files: SuperGLUE ``BoolQ/{train,val,test}.jsonl``. The local copy has no train.jsonl:
``load_splits`` then splits val.jsonl (see zoft.tasks.data).
"""

from __future__ import annotations

from zoft.tasks.choice import ChoiceTask, text


class BoolQ(ChoiceTask):
    name = "boolq"
    hub = ("aps/super_glue", "boolq")
    local_dir = "BoolQ"
    verbalizer = ("Yes", "No")
    label_values = (True, False)
    hub_labels = (False, True)

    def prompt(self, record: dict) -> str:
        question = text(record, "question").strip()
        question = question if question.endswith("?") else question + "?"
        return f"{text(record, 'passage')} {question[0].upper() + question[1:]}\n"
