"""WSC (Levesque et al. 2012; SuperGLUE "wsc.fixed"): does the pronoun refer to the noun?

Template from MeZO (princeton-nlp/MeZO ``large_models/templates.py``, ``WSCTemplate``, after
PromptSource): ``'<text>\\nIn the previous sentence, does the pronoun "<span2 lower-cased>"
refer to <span1>? Yes or No?\\n'`` -> ``"No"`` (label false) / ``"Yes"`` (label true).
Files: SuperGLUE ``WSC/{train,val,test}.jsonl`` (spans under ``target``); test is unlabelled.
"""

from __future__ import annotations

from zoft.tasks.choice import ChoiceTask, text


class WSC(ChoiceTask):
    name = "wsc"
    hub = ("aps/super_glue", "wsc.fixed")
    local_dir = "WSC"
    verbalizer = ("No", "Yes")
    label_values = (False, True)

    def prompt(self, record: dict) -> str:
        target = record["target"]
        span1, span2 = text(target, "span1_text"), text(target, "span2_text")
        return (f"{text(record, 'text')}\nIn the previous sentence, does the pronoun "
                f'"{span2.lower()}" refer to {span1}? Yes or No?\n')

    def hub_record(self, row: dict) -> dict:
        """Hugging Face keeps the spans at top level; the official files nest them in target."""
        keys = ("span1_index", "span2_index", "span1_text", "span2_text")
        row["target"] = {k: row.pop(k) for k in keys if k in row}
        return super().hub_record(row)
