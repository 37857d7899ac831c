"""MeZO's train / dev / test samples of a task, with every departure from the protocol noted.

Protocol (Malladi et al. 2023, "Fine-Tuning Language Models with Just Forward Passes",
princeton-nlp/MeZO ``large_models/run.py``): train and dev are sampled disjointly from the
original train split; test is sampled from the labelled test split if there is one, else
from the validation split (GLUE / SuperGLUE test labels are hidden). MeZO uses 1000 / 500 /
1000. Sampling uses ``numpy.random.default_rng([seed, stream])``, one stream per draw, never
the global RNG; as in MeZO the test sample depends on the seed too.

Where the data comes from: ``data_dir``, else ``$ZOFT_DATA_DIR``, read from
``<data_dir>/<task.local_dir>/`` in the official file layout; with neither, from the Hugging
Face hub via ``datasets.load_dataset(*task.hub)`` (offline this fails with a one-line
``DataUnavailableError`` saying to pass --data-dir or set ZOFT_DATA_DIR). The built-in
``sentiment-demo`` needs neither: it samples train / dev / test from its own train /
validation / test splits.

Fallbacks, each adding one line to ``Splits.notes``:

- test split unlabelled or absent -> test sampled from the validation split (locally SST-2,
  COPA, CB, RTE, WSC, WiC, WinoGrande, ReCoRD; SQuAD / DROP have no test split).
- no train split (locally BoolQ and MultiRC) -> the validation records are shuffled with the
  seed and divided by whole records (a MultiRC paragraph or ReCoRD passage never straddles):
  test gets min(test_size, n * test_size / (train_size + dev_size + test_size)) examples,
  rounded up to a whole record, and train / dev are sampled from the rest.
- a split read from a task's fallback file: WiC train from the reconstructed
  ``alt_reformatted_full_train``; WinoGrande train from ``train_l`` (train_xl absent); ReCoRD
  train / validation from the FewGLUE-32 ``fewglue32/train`` / ``dev32`` sets.
- train + dev larger than the train pool -> both shrunk in the requested proportion.
- test larger than its pool -> the whole pool.
- the task folder missing under the data directory -> the hub (and its note).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from zoft.tasks.base import Example, Task
from zoft.tasks.formats import as_list, check_records, is_labelled
from zoft.tasks.registry import get_task

ENV_VAR = "ZOFT_DATA_DIR"
_DIVIDE, _TRAIN, _DEV, _TEST = range(4)  # one random stream per draw
Reader = Callable[[str], "list[dict] | None"]


class DataUnavailableError(RuntimeError):
    """Neither a local copy nor the Hugging Face hub could provide a task's data."""


@dataclass
class Splits:
    """The sampled examples, and one line per fallback taken (see the module docstring)."""

    train: list[Example]
    dev: list[Example]
    test: list[Example]
    notes: list[str] = field(default_factory=list)


def load_splits(task_name: "str | Task", data_dir: str | Path | None = None, train_size: int = 1000,
                dev_size: int = 500, test_size: int = 1000, seed: int = 0) -> Splits:
    """Sample train / dev / test Examples of ``task_name`` by MeZO's protocol."""
    task = task_name if isinstance(task_name, Task) else get_task(task_name)
    for name, value in [("train_size", train_size), ("dev_size", dev_size),
                        ("test_size", test_size), ("seed", seed)]:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"invalid {name} {value!r}; must be an integer >= 0")
    notes: list[str] = []
    read = _reader(task, data_dir, notes)
    sizes = (train_size, dev_size, test_size)
    train_pool, dev_pool, test_pool = _pools(task, read, seed, sizes, notes)
    if dev_pool is None:
        train, dev = _train_dev(task.name, train_pool, train_size, dev_size, seed, notes)
    else:
        train = _take(task.name, "train", train_pool, train_size, seed, _TRAIN, notes)
        dev = _take(task.name, "dev", dev_pool, dev_size, seed, _DEV, notes)
    test = _take(task.name, "test", test_pool, test_size, seed, _TEST, notes)
    return Splits(train, dev, test, notes)


def _examples(task: Task, records: Sequence[dict]) -> list[Example]:
    return [ex for record in records for ex in as_list(task.example(record))]


def _labelled(task: Task, records: Sequence[dict] | None, what: str) -> list[Example]:
    examples = _examples(task, records or [])
    if not examples or not all(is_labelled(ex) for ex in examples):
        raise ValueError(f"{task.name}: the {what} has no labelled examples")
    return examples


def _pools(task: Task, read: Reader, seed: int, sizes: tuple[int, int, int],
           notes: list[str]) -> tuple[list[Example], list[Example] | None, list[Example]]:
    """(train pool, dev pool or None to split dev off the train pool, test pool)."""
    if getattr(task, "dev_split", "train") == "validation":
        return (_labelled(task, read("train"), "train split"),
                _labelled(task, read("validation"), "validation split"),
                _labelled(task, read("test"), "test split"))
    train, test = read("train"), read("test")
    test_examples = _examples(task, test or [])
    if test_examples and all(is_labelled(ex) for ex in test_examples):
        if train is None:
            train = _require(task, read("validation"), "train or validation")
            notes.append(f"{task.name}: no train split; train/dev sampled from the validation split")
        return _labelled(task, train, "train split"), None, test_examples
    validation = _require(task, read("validation"), "validation")
    if train is None:
        return _divided(task, validation, seed, sizes, notes)
    state = "has no labels" if test else "is absent"
    pool = _labelled(task, validation, "validation split")
    notes.append(f"{task.name}: test split {state}; test sampled from the validation split "
                 f"({len(pool)} examples)")
    return _labelled(task, train, "train split"), None, pool


def _require(task: Task, records: list[dict] | None, what: str) -> list[dict]:
    if records is None:
        raise DataUnavailableError(f"{task.name}: no {what} split found")
    return records


def _divided(task: Task, validation: list[dict], seed: int, sizes: tuple[int, int, int],
             notes: list[str]) -> tuple[list[Example], None, list[Example]]:
    """No train split: divide the validation records (whole records) into train and test pools."""
    per_record = [as_list(task.example(r)) for r in validation]
    n = sum(len(x) for x in per_record)
    target = min(sizes[2], round(n * sizes[2] / max(1, sum(sizes))))
    test: list[Example] = []
    rest: list[Example] = []
    for i in np.random.default_rng([seed, _DIVIDE]).permutation(len(per_record)):
        (test if len(test) < target else rest).extend(per_record[i])
    notes.append(f"{task.name}: no train split; the validation split ({len(validation)} records, "
                 f"{n} examples) was divided by whole records with seed {seed}: {len(test)} "
                 f"examples for test, {len(rest)} for train/dev")
    if not rest or not all(is_labelled(ex) for ex in rest + test):
        raise ValueError(f"{task.name}: the validation split has too few labelled examples to divide")
    return rest, None, test


def _train_dev(name: str, pool: list[Example], train_size: int, dev_size: int, seed: int,
               notes: list[str]) -> tuple[list[Example], list[Example]]:
    """Disjoint train and dev samples of one pool (MeZO: dev is taken from train)."""
    n = len(pool)
    n_train, n_dev = train_size, dev_size
    if train_size + dev_size > n:
        n_dev = min(dev_size, round(n * dev_size / (train_size + dev_size)))
        n_train = min(train_size, n - n_dev)
        notes.append(f"{name}: asked for train {train_size} + dev {dev_size} but only {n} examples "
                     f"are available; using train {n_train} + dev {n_dev} (same proportion)")
    order = np.random.default_rng([seed, _TRAIN]).permutation(n)
    return [pool[i] for i in order[:n_train]], [pool[i] for i in order[n_train: n_train + n_dev]]


def _take(name: str, what: str, pool: list[Example], size: int, seed: int, stream: int,
          notes: list[str]) -> list[Example]:
    if size > len(pool):
        notes.append(f"{name}: asked for {what} {size} but only {len(pool)} examples are "
                     f"available; using all {len(pool)}")
    order = np.random.default_rng([seed, stream]).permutation(len(pool))
    return [pool[i] for i in order[:size]]


def _reader(task: Task, data_dir: str | Path | None, notes: list[str]) -> Reader:
    """split -> raw records (None when the split is absent), from disk or the hub."""
    if not task.local_dir:  # built-in data
        return _local_reader(task, Path(), notes)
    root = data_dir if data_dir is not None else os.environ.get(ENV_VAR) or None
    if root is None:
        return _hub_reader(task, f"no data directory was given (--data-dir / {ENV_VAR})", notes)
    if not Path(root).is_dir():
        raise FileNotFoundError(f"data directory {root} does not exist (from "
                                f"{'data_dir' if data_dir is not None else ENV_VAR})")
    folder = Path(root) / task.local_dir
    if not folder.is_dir():
        notes.append(f"{task.name}: no {task.local_dir}/ under {root}; trying the Hugging Face hub")
        return _hub_reader(task, f"{folder} does not exist", notes)
    return _local_reader(task, folder, notes)


def _local_reader(task: Task, folder: Path, notes: list[str]) -> Reader:
    cache: dict[str, list[dict] | None] = {}

    def read(split: str) -> list[dict] | None:
        if split not in cache:
            try:
                cache[split] = task.records(split, folder)
            except FileNotFoundError:
                cache[split] = None
            else:
                _note_fallback_file(task, split, folder, notes)
        return cache[split]

    return read


def _note_fallback_file(task: Task, split: str, folder: Path, notes: list[str]) -> None:
    files = getattr(task, "files", {}).get(split, ())
    if not task.local_dir or not files:
        return
    used = task.source(split, folder).relative_to(folder).as_posix()
    if used != files[0]:
        reason = getattr(task, "fallback_reasons", {}).get(used)
        notes.append(f"{task.name}: {split} split read from {task.local_dir}/{used} "
                     f"({files[0]} not found{'; ' + reason if reason else ''})")


def _hub_reader(task: Task, why: str, notes: list[str]) -> Reader:
    hub_id, config = task.hub
    loaded = _hub_load(task, why)
    notes.append(f"{task.name}: loaded from the Hugging Face hub ({hub_id}"
                 f"{', ' + config if config else ''})")
    convert = getattr(task, "from_hub", lambda rows: [dict(r) for r in rows])

    def read(split: str) -> list[dict] | None:
        if split not in loaded:
            return None
        records = convert(loaded[split])
        check_records(task, [(f"row {i + 1}", r) for i, r in enumerate(records)],
                      Path(f"hf://{hub_id}/{config or 'default'}/{split}"))
        return records

    return read


def _hub_load(task: Task, why: str):
    """``datasets.load_dataset(*task.hub)``; any failure becomes one clear line."""
    hub_id, config = task.hub
    try:
        if not hub_id:
            raise LookupError("the task has no hub copy")
        import datasets

        return datasets.load_dataset(hub_id, config)
    except Exception as e:  # offline, missing package, unknown id
        first = (str(e).strip().splitlines() or [""])[0][:160]
        raise DataUnavailableError(
            f"cannot load task {task.name!r}: {why}, and loading {hub_id or 'it'} from the Hugging "
            f"Face hub failed ({type(e).__name__}: {first}); pass --data-dir DIR or set {ENV_VAR} "
            f"to a folder holding {task.local_dir}/ in the official layout") from None
