"""A benchmark spec is a grid of TrainConfig values; each point is a cell with a stable hash.

    name: sst2-lora
    base: {task: sst2, peft: lora, steps: 300, batch_size: 16, eval_every: 150}
    grid:                      # cartesian product over these keys
      optimizer: [zo-sgd, fo-adam]
      lr: [1.0e-4, 1.0e-5]
      seed: [0, 1, 2]
    per_optimizer:             # optional: replace grid values for one optimizer
      fo-adam: {lr: [1.0e-4]}
    quick: {steps: 2, train_size: 16, dev_size: 8, test_size: 8}   # --quick overrides

Keys are TrainConfig fields (dashes or underscores). A cell's hash is taken over its whole
resolved config except ``out``, so a finished cell is recognised and skipped on a rerun.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zoft.train.config import TrainConfig, read_config_file

SPEC_KEYS = {"name", "base", "grid", "per_optimizer", "quick"}


@dataclass(frozen=True)
class Cell:
    config: dict[str, Any]  # TrainConfig fields (without out)
    varied: dict[str, Any]  # the grid keys of this cell and their values

    @property
    def key(self) -> str:
        text = json.dumps(self.config, sort_keys=True, default=str)
        return hashlib.sha1(text.encode()).hexdigest()[:12]


def load_spec(path: str | Path) -> dict[str, Any]:
    spec = read_config_file(path)
    unknown = sorted(set(spec) - SPEC_KEYS)
    if unknown:
        raise ValueError(f"spec {path}: unknown key(s) {unknown}; valid: {sorted(SPEC_KEYS)}")
    if not isinstance(spec.get("grid", {}), dict):
        raise ValueError(f"spec {path}: 'grid' must map config keys to lists of values")
    return spec


def _norm(mapping: dict | None) -> dict[str, Any]:
    return {k.replace("-", "_"): v for k, v in (mapping or {}).items()}


def _axes(grid: dict[str, Any]) -> dict[str, list]:
    return {k: (v if isinstance(v, list) else [v]) for k, v in _norm(grid).items()}


def expand_spec(spec: dict[str, Any], quick: bool = False) -> list[Cell]:
    """Every cell of the spec, in a stable order; configs are validated by TrainConfig."""
    base = {**_norm(spec.get("base")), **(_norm(spec.get("quick")) if quick else {})}
    grid = _axes(spec.get("grid", {}))
    per_opt = {name: _axes(axes) for name, axes in (spec.get("per_optimizer") or {}).items()}
    optimizers = grid.pop("optimizer", [base.get("optimizer", TrainConfig.optimizer)])
    cells, seen = [], set()
    for opt in optimizers:
        axes = {**grid, **per_opt.get(opt, {})}
        for values in itertools.product(*axes.values()):
            varied = {"optimizer": opt, **dict(zip(axes, values))}
            config = TrainConfig.from_dict({**base, **varied}, source=f"spec cell {varied}").to_dict()
            config.pop("out")
            cell = Cell(config, varied)
            if cell.key not in seen:
                seen.add(cell.key)
                cells.append(cell)
    return cells
