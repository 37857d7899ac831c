"""Where a grid's cell files live: loose folders ``cells/KEY/`` (cells that run, resume or keep
weights) and one archive ``cells.zip`` (finished cells, packed by ``zoft report DIR --pack`` so
that a results folder is a handful of files). Readers go through :func:`read_text`; a loose
file wins over its packed copy (a cell rerun after packing)."""

from __future__ import annotations

import json
import shutil
import zipfile
from functools import lru_cache
from pathlib import Path

ARCHIVE = "cells.zip"
PACKED = ("cell.json", "config.json", "train_config.json", "summary.json", "metrics.jsonl", "train.log",
          "stderr.log", "eval-dev.json", "eval-test.json")
"""The text files of a cell that are packed; weights and checkpoints stay loose (or are dropped)."""
RUN_FILES = ("cell.json", "config.json", "train_config.json", "summary.json")
"""What `zoft eval`, `zoft export` and `--resume` read beside the weights: a cell that keeps
weights keeps these loose too (a copy is also packed)."""


@lru_cache(maxsize=8)
def _members(archive: Path, mtime_ns: int) -> dict[str, str]:
    with zipfile.ZipFile(archive) as z:
        return {name: z.read(name).decode() for name in z.namelist()}


def _archive(out: Path) -> dict[str, str]:
    path = out / ARCHIVE
    if not path.exists():
        return {}
    try:
        return _members(path, path.stat().st_mtime_ns)
    except (zipfile.BadZipFile, OSError) as err:
        raise ValueError(f"{path} is unreadable ({err}); truncated or corrupted?") from None


def keys(out: Path) -> list[str]:
    """Every cell with a cell.json, loose or packed, sorted."""
    loose = {p.parent.name for p in (out / "cells").glob("*/cell.json")}
    packed = {name.split("/")[0] for name in _archive(out) if name.endswith("/cell.json")}
    return sorted(loose | packed)


def read_text(out: Path, key: str, name: str) -> str | None:
    """A cell file's text, or None when the cell has no such file."""
    path = out / "cells" / key / name
    if path.exists():
        return path.read_text()
    return _archive(out).get(f"{key}/{name}")


def read_json(out: Path, key: str, name: str) -> dict | None:
    text = read_text(out, key, name)
    return None if text is None else json.loads(text)


def jsonl(out: Path, key: str, name: str = "metrics.jsonl") -> list[dict]:
    text = read_text(out, key, name)
    return [json.loads(line) for line in text.splitlines() if line] if text else []


def pack(out: Path) -> list[str]:
    """Move every finished cell's text files into ``cells.zip`` (rewritten atomically) and
    remove its folder when nothing else is left in it; unfinished cells stay loose (they
    resume from their folder), and a cell that keeps weights keeps its :data:`RUN_FILES` loose
    (a run folder that `zoft eval` and `zoft export` can read). Returns the keys packed."""
    members = dict(_archive(out))
    packed = []
    for folder in sorted((out / "cells").glob("*/")):
        summary = folder / "summary.json"
        if not summary.exists() or json.loads(summary.read_text()).get("status") != "finished":
            continue
        for name in PACKED:
            if (folder / name).exists():
                members[f"{folder.name}/{name}"] = (folder / name).read_text()
        packed.append(folder.name)
    if not packed:
        return []
    tmp = out / f".{ARCHIVE}.tmp"
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name in sorted(members):
            z.writestr(name, members[name])
    tmp.replace(out / ARCHIVE)
    for key in packed:
        folder = out / "cells" / key
        weights = any(p.name not in PACKED for p in folder.iterdir())
        for name in PACKED:
            if not (weights and name in RUN_FILES):
                (folder / name).unlink(missing_ok=True)
        if not any(folder.iterdir()):
            shutil.rmtree(folder)
    if (out / "cells").exists() and not any((out / "cells").iterdir()):
        (out / "cells").rmdir()
    return packed
