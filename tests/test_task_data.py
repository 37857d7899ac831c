"""The MeZO protocol on the real local data (ZOFT_DATA_DIR); skipped when it is unset.

One row per locally available task: the sizes load_splits must return for a small request,
and the notes its fallbacks must leave (see zoft.tasks.data).
"""

from __future__ import annotations

import os

import pytest

from zoft.tasks import load_splits

DATA_DIR = os.environ.get("ZOFT_DATA_DIR")
pytestmark = pytest.mark.skipif(not DATA_DIR, reason="ZOFT_DATA_DIR is not set")

SIZES = dict(train_size=100, dev_size=50, test_size=80)
UNLABELLED_TEST = "test split has no labels; test sampled from the validation split"
DIVIDED = "no train split; the validation split"
ROWS = {  # task -> (train, dev, test) sizes returned for SIZES, note fragments
    "sst2": ((100, 50, 80), [UNLABELLED_TEST]),
    "copa": ((100, 50, 80), [UNLABELLED_TEST]),
    "cb": ((100, 50, 56), [UNLABELLED_TEST, "asked for test 80 but only 56"]),
    "rte": ((100, 50, 80), [UNLABELLED_TEST]),
    "wsc": ((100, 50, 80), [UNLABELLED_TEST]),
    "boolq": ((100, 50, 80), [DIVIDED]),
    "multirc": ((100, 50, 80), [DIVIDED]),
    "wic": ((100, 50, 80), ["train split read from WiC/alt_reformatted_full_train/", UNLABELLED_TEST]),
    "winogrande": ((100, 50, 80), ["train split read from WinoGrande/train_l.jsonl", UNLABELLED_TEST]),
    "record": ((21, 11, 32), ["train split read from ReCoRD/fewglue32/train.jsonl",
                              "validation split read from ReCoRD/fewglue32/dev32.jsonl",
                              "test split is absent", "using train 21 + dev 11"]),
}


@pytest.fixture(scope="module")
def loaded():
    cache = {}

    def load(name: str, seed: int = 0):
        if (name, seed) not in cache:
            cache[name, seed] = load_splits(name, seed=seed, **SIZES)
        return cache[name, seed]

    return load


@pytest.mark.parametrize("name", sorted(ROWS))
def test_sizes_and_notes(loaded, name):
    splits = loaded(name)
    sizes, fragments = ROWS[name]
    assert (len(splits.train), len(splits.dev), len(splits.test)) == sizes
    for fragment in fragments:
        assert any(fragment in note for note in splits.notes), (fragment, splits.notes)
    assert all(note.startswith(f"{name}: ") and "\n" not in note for note in splits.notes)


@pytest.mark.parametrize("name", sorted(ROWS))
def test_every_example_is_labelled_and_well_formed(loaded, name):
    splits = loaded(name)
    for ex in splits.train + splits.dev + splits.test:
        assert ex.prompt and len(ex.candidates) >= 2 and 0 <= ex.label < len(ex.candidates)


@pytest.mark.parametrize("name", sorted(ROWS))
def test_train_dev_test_are_disjoint(loaded, name):
    splits = loaded(name)
    ids = [{id(ex) for ex in part} for part in (splits.train, splits.dev, splits.test)]
    assert len(ids[0] | ids[1] | ids[2]) == sum(map(len, ids))
    if name == "multirc":  # divided by paragraph: no question on both sides
        assert {e.group for e in splits.test}.isdisjoint(e.group for e in splits.train + splits.dev)


@pytest.mark.parametrize("name", sorted(ROWS))
def test_deterministic_by_seed(loaded, name):
    first = loaded(name)
    again = load_splits(name, seed=0, **SIZES)
    assert (again.train, again.dev, again.test) == (first.train, first.dev, first.test)
    assert again.notes == first.notes
    assert loaded(name, seed=1).train != first.train


def test_data_dir_argument_beats_the_environment(monkeypatch):
    monkeypatch.setenv("ZOFT_DATA_DIR", "/nonexistent/zoft-data")
    splits = load_splits("rte", DATA_DIR, train_size=10, dev_size=5, test_size=10)
    assert (len(splits.train), len(splits.dev), len(splits.test)) == (10, 5, 10)


def test_mezo_default_sizes_on_sst2():
    splits = load_splits("sst2")
    assert (len(splits.train), len(splits.dev), len(splits.test)) == (1000, 500, 872)
    assert sum(ex.label for ex in splits.test) == 444  # GLUE SST-2 validation: 444 positive
