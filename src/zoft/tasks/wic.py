"""WiC (Pilehvar & Camacho-Collados 2019; SuperGLUE): same sense of a word in two sentences?

Template from MeZO (princeton-nlp/MeZO ``large_models/templates.py``, ``WICTemplate``, after
PromptSource): ``'Does the word "<word>" have the same meaning in these two sentences?
Yes, No?\\n<sentence1>\\n<sentence2>\\n'`` -> ``"No"`` (label false) / ``"Yes"`` (label true).
Files: SuperGLUE ``WiC/{train,val,test}.jsonl``. Without train.jsonl the train split is read
from ``alt_reformatted_full_train/wic_train_5428_reconstructed.jsonl`` when present (a
non-official reconstruction of the 5,428 training pairs with tokenised text, see the data
folder's PROVENANCE.md); ``load_splits`` reports this in its notes.
"""

from __future__ import annotations

from zoft.tasks.choice import SUPERGLUE_FILES, ChoiceTask, text

_ALT_TRAIN = "alt_reformatted_full_train/wic_train_5428_reconstructed.jsonl"


class WiC(ChoiceTask):
    name = "wic"
    hub = ("aps/super_glue", "wic")
    local_dir = "WiC"
    files = {**SUPERGLUE_FILES, "train": ("train.jsonl", _ALT_TRAIN)}
    fallback_reasons = {_ALT_TRAIN: "a non-official reconstruction of the official 5,428 training "
                                    "pairs (tokenised text, no character offsets)"}
    verbalizer = ("No", "Yes")
    label_values = (False, True)

    def prompt(self, record: dict) -> str:
        word, s1, s2 = text(record, "word"), text(record, "sentence1"), text(record, "sentence2")
        return (f'Does the word "{word}" have the same meaning in these two sentences? Yes, No?\n'
                f"{s1}\n{s2}\n")
