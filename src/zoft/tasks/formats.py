"""Readers for the official file layouts and ``FileTask``, the base of every file-backed task.

Readers return ``(where, record)`` pairs, ``where`` being ``"line N"`` (1-based; JSON Lines,
TSV) or a path inside a JSON document (SQuAD, DROP), so that every error can say exactly
where it is. Every malformed, empty or truncated input raises a ``ValueError`` whose message
starts with the file name and the line: a bad JSON line, a missing column, a wrong label
value, a labels file shorter than its data file, a file that mixes labelled and unlabelled rows.

Formats: GLUE TSV (header row, tab-separated, no quoting: Wang et al. 2019,
https://gluebenchmark.com/tasks); SuperGLUE JSON Lines (one JSON object per line:
Wang et al. 2019, https://super.gluebenchmark.com/tasks); WinoGrande ``*.jsonl`` with a
``*-labels.lst`` file of one label per line (Sakaguchi et al. 2020, allenai/winogrande).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Literal

from zoft.tasks.base import Example, Task

Split = Literal["train", "validation", "test"]
Located = list[tuple[str, dict]]  # (where in the file, raw record)


def fail(path: Path, where: str, message: str) -> ValueError:
    """The one error shape of this package: ``<file>, <where>: <message>``."""
    return ValueError(f"{path}, {where}: {message}")


def _text(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise fail(path, f"line {line}", f"not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); "
                   "re-save the file as UTF-8") from None
    if not text.strip():
        raise fail(path, "line 1", "file is empty")
    return text


def read_jsonl(path: Path) -> Located:
    """One JSON object per line; blank lines are skipped."""
    rows = []
    for n, line in enumerate(_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise fail(path, f"line {n}", f"invalid JSON ({e.msg} at column {e.colno}); "
                       "truncated or corrupted file?") from None
        if not isinstance(record, dict):
            raise fail(path, f"line {n}", f"expected a JSON object, got {type(record).__name__}")
        rows.append((f"line {n}", record))
    return rows


def read_tsv(path: Path, columns: tuple[str, ...]) -> Located:
    """GLUE TSV: a header naming the columns, then one tab-separated row per line."""
    lines = _text(path).splitlines()
    header = lines[0].split("\t")
    missing = [c for c in columns if c not in header]
    if missing:
        raise fail(path, "line 1", f"header {header} lacks column(s) {missing}")
    rows = []
    for n, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != len(header):
            raise fail(path, f"line {n}",
                       f"expected {len(header)} tab-separated fields, got {len(fields)}")
        rows.append((f"line {n}", dict(zip(header, fields))))
    if not rows:
        raise fail(path, "line 2", "no data rows after the header")
    return rows


def read_json(path: Path) -> object:
    """A whole JSON document (SQuAD, DROP); a syntax error names its line."""
    try:
        return json.loads(_text(path))
    except json.JSONDecodeError as e:
        raise fail(path, f"line {e.lineno}",
                   f"invalid JSON ({e.msg}); truncated or corrupted file?") from None


def read_labels(path: Path, n_data: int, data: Path, allowed: tuple[str, ...]) -> list[str]:
    """A labels file with one label per line, exactly one per data row."""
    labels = [line.strip() for line in _text(path).splitlines()]
    while labels and not labels[-1]:
        labels.pop()
    for n, label in enumerate(labels, start=1):
        if label not in allowed:
            raise fail(path, f"line {n}", f"invalid label {label!r}; expected one of {list(allowed)}")
    if len(labels) != n_data:
        n = min(len(labels), n_data) + 1
        raise fail(path, f"line {n}", f"has {len(labels)} labels but {data.name} has {n_data} rows")
    return labels


def _describe(e: Exception) -> str:
    if isinstance(e, KeyError):
        return f"missing field {e.args[0]!r}"
    return str(e) if isinstance(e, ValueError) else f"malformed record ({type(e).__name__}: {e})"


def as_list(made: Example | list[Example]) -> list[Example]:
    return made if isinstance(made, list) else [made]


def is_labelled(example: Example) -> bool:
    return example.label is not None or bool(example.answers)


class FileTask(Task):
    """A task read from the official layout: ``files`` lists, per split, the files to try.

    ``files[split]`` holds paths relative to the task folder, best first; a later entry is a
    fallback (its reason in ``fallback_reasons``, reported by ``load_splits`` as a note).
    Subclasses implement ``read`` for their format (default: by suffix) and ``example``.
    """

    files: dict[str, tuple[str, ...]] = {}
    fallback_reasons: dict[str, str] = {}
    tsv_columns: tuple[str, ...] = ()
    dev_split: Split = "train"  # load_splits samples dev from here (MeZO: from train)

    def source(self, split: Split, folder: Path) -> Path:
        """The first existing file of ``split``; FileNotFoundError when there is none."""
        for rel in self.files.get(split, ()):
            if (folder / rel).is_file():
                return folder / rel
        tried = ", ".join(self.files.get(split, ())) or "no file known"
        raise FileNotFoundError(f"{self.name}: no {split} split under {folder} (tried {tried})")

    def read(self, path: Path) -> Located:
        if path.suffix == ".tsv":
            return read_tsv(path, self.tsv_columns)
        if path.suffix == ".jsonl":
            return read_jsonl(path)
        raise ValueError(f"{self.name}: no reader for {path}")

    def records(self, split: Split, folder: Path) -> list[dict]:
        """Raw records of ``split``, each checked by building its examples (see module doc)."""
        path = self.source(split, folder)
        rows = self.read(path)
        check_records(self, rows, path)
        return [record for _, record in rows]

    def from_hub(self, rows: Iterable[dict]) -> list[dict]:
        """Hugging Face rows -> records in the official format ``example`` reads."""
        return [self.hub_record(dict(row)) for row in rows]

    def hub_record(self, row: dict) -> dict:
        return row


def check_records(task: Task, rows: Located, path: Path) -> None:
    """Build every example; a record that fails, or breaks the file's labelling, is named."""
    labelled = None
    for where, record in rows:
        try:
            examples = as_list(task.example(record))
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
            raise fail(path, where, _describe(e)) from None
        if not examples:
            raise fail(path, where, "record yields no example")
        flags = {is_labelled(ex) for ex in examples}
        if len(flags) > 1:
            raise fail(path, where, "some answers of this record are labelled and some are not")
        flag = flags.pop()
        if labelled is None:
            labelled = flag
        elif flag != labelled:
            state = "has no label" if labelled else "has a label"
            raise fail(path, where, f"record {state} unlike the file's first record")


def label_index(value: object, allowed: tuple) -> int:
    """Index of ``value`` in ``allowed``, comparing types too (True is not 1 here)."""
    for i, v in enumerate(allowed):
        if type(v) is type(value) and v == value:
            return i
    raise ValueError(f"invalid label {value!r}; expected one of {list(allowed)}")
