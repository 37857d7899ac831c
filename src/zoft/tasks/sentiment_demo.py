"""sentiment-demo: 300 short, original English sentiment sentences shipped with zoft.

Written for zoft (not drawn from any dataset): 150 positive / 150 negative sentences about
food, films, products, travel and services, mostly as minimal pairs on one topic, so that
topic words do not give the label away. Package data ``zoft/tasks/builtin/sentiment_demo.tsv``
in the SST-2 format (columns ``sentence``, ``label``: 0 negative, 1 positive), so it uses the
SST-2 template and verbalizer: ``"<sentence> It was"`` -> ``" terrible"`` / ``" great"``.

Splits, fixed by a hash: within each label, sentences are ranked by the SHA-256 of their
UTF-8 text; ranks 0-99 are train, 100-124 validation, 125-149 test, i.e. 200 / 50 / 50
sentences, each split exactly balanced. ``load_splits`` samples train from the train split,
dev from the validation split and test from the test split; no data folder is needed.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path

from zoft.tasks.formats import Located, read_tsv
from zoft.tasks.sst2 import SST2

_FILE = "sentiment_demo.tsv"
_BOUNDS = {"train": (0, 100), "validation": (100, 125), "test": (125, 150)}


def _rank_key(record: dict) -> str:
    return hashlib.sha256(record["sentence"].encode("utf-8")).hexdigest()


class SentimentDemo(SST2):
    name = "sentiment-demo"
    hub = ("", None)
    local_dir = ""
    dev_split = "validation"
    files = {"train": (_FILE,), "validation": (_FILE,), "test": (_FILE,)}

    def source(self, split: str, folder: Path) -> Path:
        """The packaged TSV, wherever ``folder`` points."""
        if split not in _BOUNDS:
            raise FileNotFoundError(f"{self.name}: no split {split!r}")
        return Path(str(resources.files("zoft.tasks") / "builtin" / _FILE))

    def read(self, path: Path) -> Located:
        return read_tsv(path, ("sentence", "label"))

    def records(self, split: str, folder: Path) -> list[dict]:
        rows = super().records(split, folder)
        lo, hi = _BOUNDS[split]
        by_label: dict[str, list[dict]] = {}
        for record in rows:
            by_label.setdefault(record["label"], []).append(record)
        return [r for label in sorted(by_label) for r in sorted(by_label[label], key=_rank_key)[lo:hi]]
