"""SST-2 (Socher et al. 2013; GLUE, Wang et al. 2019): binary sentiment of movie-review phrases.

Template and verbalizer from MeZO (princeton-nlp/MeZO ``large_models/templates.py``,
``SST2Template``): ``"<sentence> It was"`` -> ``" terrible"`` (label 0) / ``" great"`` (label 1).
Files: GLUE ``SST-2/{train,dev,test}.tsv`` (columns ``sentence``, ``label``); the GLUE test
file has no labels, so ``load_splits`` samples the test set from ``dev.tsv``.
Hub fallback: ``nyu-mll/glue`` config ``sst2`` (the id ``glue`` redirects there).
"""

from __future__ import annotations

from zoft.tasks.choice import ChoiceTask, text


class SST2(ChoiceTask):
    name = "sst2"
    hub = ("nyu-mll/glue", "sst2")
    local_dir = "SST-2"
    files = {"train": ("train.tsv",), "validation": ("dev.tsv",), "test": ("test.tsv",)}
    tsv_columns = ("sentence",)
    verbalizer = (" terrible", " great")
    label_values = ("0", "1")

    def prompt(self, record: dict) -> str:
        return f"{text(record, 'sentence').strip()} It was"
