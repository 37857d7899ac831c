"""Run every cell of a grid as its own ``zoft train`` process (clean peak-memory figures).

Resumable: a cell whose summary.json says finished is skipped; one with a checkpoint is
resumed; a failed one (non-finite loss, crash) is recorded and the grid goes on. With
``drop_weights`` a finished cell's weight files (checkpoint, best weights, optimizer state) are
deleted, keeping its config, metrics and summary: a full fine-tuning grid otherwise keeps a copy
of the model per cell. With ``jobs`` > 1 that many cells run at once, each process given
cores // jobs torch threads (bench/parallel_cells.py measures whether that trains more steps per
second in total than one cell with every thread); each cell's peak memory is still its own
process's, its wall time is measured beside its neighbours (cell.json records jobs and threads).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from zoft.bench import store
from zoft.bench.grid import Cell
from zoft.train.checkpoint import BEST, MANIFEST, write_json
from zoft.train.run_files import PAUSED, finished_summary

WEIGHT_FILES = (MANIFEST, BEST, "checkpoint-*.json", "weights-*.safetensors", "optimizer-*.pt")


def thread_env(threads: int) -> dict[str, str]:
    """This process's environment with torch's thread count (OpenMP and MKL) set to ``threads``."""
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def cell_dir(out: Path, cell: Cell) -> Path:
    return out / "cells" / cell.key


def drop_weight_files(folder: Path) -> None:
    """Delete a finished cell's checkpoint, best weights and optimizer state."""
    for pattern in WEIGHT_FILES:
        for path in folder.glob(pattern):
            path.unlink()


def run_cell(out: Path, cell: Cell, log: Callable[[str], None], drop_weights: bool = False,
             threads: int | None = None, jobs: int = 1, piece_passes: int | None = None) -> dict:
    """The cell's summary, running or resuming ``zoft train`` when it is not finished; with
    ``drop_weights`` a finished cell's weight files are deleted. ``threads`` sets the process's
    torch threads (OMP_NUM_THREADS); None leaves the environment as it is. ``piece_passes``:
    train at most that many forward passes now, then pause (``{"status": "paused"}``)."""
    summary = _run_or_skip(out, cell, log, threads, jobs, piece_passes)
    if drop_weights and summary.get("status") == "finished":
        drop_weight_files(cell_dir(out, cell))
    return summary


def _run_or_skip(out: Path, cell: Cell, log: Callable[[str], None], threads: int | None = None,
                 jobs: int = 1, piece_passes: int | None = None) -> dict:
    folder = cell_dir(out, cell)
    if (summary := finished_summary(folder)) is not None:
        return summary
    packed = store.read_json(out, cell.key, "summary.json") if not folder.exists() else None
    if packed is not None and packed.get("status") == "finished":
        return packed
    folder.mkdir(parents=True, exist_ok=True)
    record = {"varied": cell.varied, "config": cell.config}
    if threads is not None:
        record.update(jobs=jobs, threads=threads)
    write_json(folder / "cell.json", record)
    if (folder / MANIFEST).exists():
        argv = ["train", "--resume", str(folder)]
    else:
        write_json(folder / "train_config.json", cell.config)
        argv = ["train", "--config", str(folder / "train_config.json"), "--out", str(folder)]
    if piece_passes is not None:
        argv += ["--pause-after-passes", str(piece_passes)]
    with open(folder / "stderr.log", "a") as err:
        env = None if threads is None else thread_env(threads)
        proc = subprocess.run([sys.executable, "-m", "zoft", *argv], stdout=subprocess.DEVNULL, stderr=err, env=env)
    summary_path = folder / "summary.json"
    if summary_path.exists():
        return json.loads(summary_path.read_text())
    if proc.returncode == PAUSED:
        log(f"cell {cell.key} {cell.varied} paused after {piece_passes} forward passes; rerun to continue")
        return {"status": "paused"}
    log(f"cell {cell.key} {cell.varied} exited {proc.returncode}; see {folder / 'stderr.log'}")
    return {"status": "crashed", "returncode": proc.returncode}


def run_grid(cells: list[Cell], out: Path, log: Callable[[str], None] = tqdm.write,
             drop_weights: bool = False, jobs: int = 1, piece_passes: int | None = None) -> list[dict]:
    """Run (or skip) every cell, ``jobs`` at a time; returns one record per cell, in the cells'
    order: its config, varied keys and summary. ``piece_passes``: advance each unfinished cell
    by at most that many training forward passes (a piece), then pause it."""
    if jobs < 1:
        raise ValueError(f"--jobs must be at least 1, got {jobs}")
    if piece_passes is not None and piece_passes < 1:
        raise ValueError(f"--piece-passes must be at least 1, got {piece_passes}")
    out.mkdir(parents=True, exist_ok=True)
    threads = None if jobs == 1 else max(1, (os.cpu_count() or 1) // jobs)
    bar = tqdm(total=len(cells), desc=f"grid {out.name}", unit="cell")

    def one(cell: Cell) -> dict:
        summary = run_cell(out, cell, log, drop_weights, threads, jobs, piece_passes)
        bar.update()
        return {"key": cell.key, "varied": cell.varied, "config": cell.config, "summary": summary}

    with bar, ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(one, cells))
