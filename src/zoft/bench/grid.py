"""A benchmark spec is a grid of TrainConfig values; each point is a cell with a stable hash.

    name: sst2-lora
    base: {task: sst2, peft: lora, steps: 300, batch_size: 16, eval_every: 150}
    grid:                      # cartesian product over these keys
      optimizer: [zo-sgd, fo-adam]
      lr: [1.0e-4, 1.0e-5]
      seed: [0, 1, 2]
    per_optimizer:             # optional: replace grid values for one optimizer
      fo-adam: {lr: [1.0e-4]}
    quick: {steps: 2, train_size: 16, seed: [0]}   # --quick overrides (a grid key: replaces its axis)
    zero_shot: true            # plus one untrained cell per (model, task, peft, seed): optimizer "zero-shot"
    exclude:                   # cells matching every key of an entry are not run
      - {optimizer: fo-adam, seed: 2}

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

SPEC_KEYS = {"name", "base", "grid", "per_optimizer", "quick", "zero_shot", "exclude"}
ZERO_SHOT = "zero-shot"
KEY_DEFAULTS = {"objective": "loss"}
"""TrainConfig options added after grids were stored whose default is not None: at this value
they are left out of a cell's key, as an unset option is. A new option with a non-None default
must be added here, or every stored cell would run again (tests/test_bench.py checks the keys
of the committed cells)."""
# What a zero-shot cell varies over. The seed samples the train/dev/test examples, so each seed's
# trained cells are compared with the untrained model on their own dev and test examples.
CELL_KEYS = ("model", "task", "peft", "seed")


@dataclass(frozen=True)
class Cell:
    config: dict[str, Any]  # TrainConfig fields (without out)
    varied: dict[str, Any]  # the grid keys of this cell and their values

    @property
    def key(self) -> str:
        # Unset (None) fields are left out, so adding an option to TrainConfig does not change
        # the key of every cell that was run before the option existed; so are options added
        # later with a non-None default, at that default (KEY_DEFAULTS).
        config = {k: v for k, v in self.config.items() if v is not None and KEY_DEFAULTS.get(k) != v}
        text = json.dumps(config, sort_keys=True, default=str)
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


def _cell(values: dict[str, Any], varied: dict[str, Any]) -> Cell:
    """The cell of a resolved config (validated by TrainConfig; ``out`` is not part of it)."""
    config = TrainConfig.from_dict(values, source=f"spec cell {varied}").to_dict()
    config.pop("out")
    return Cell(config, varied)


def expand_spec(spec: dict[str, Any], quick: bool = False) -> list[Cell]:
    """Every cell of the spec, in a stable order; configs are validated by TrainConfig."""
    grid = _axes(spec.get("grid", {}))
    overrides = _norm(spec.get("quick")) if quick else {}  # a grid key in quick replaces its axis
    quick_axes = _axes({k: v for k, v in overrides.items() if k in grid})
    base = {**_norm(spec.get("base")), **{k: v for k, v in overrides.items() if k not in grid}}
    grid.update(quick_axes)
    per_opt = {name: {**_axes(axes), **quick_axes} for name, axes in (spec.get("per_optimizer") or {}).items()}
    optimizers = grid.pop("optimizer", [base.get("optimizer", TrainConfig.optimizer)])
    cells, seen = [], set()
    if spec.get("zero_shot"):  # the untrained model: steps 0, dev and test scored
        fixed = {k: grid[k] for k in CELL_KEYS if k in grid}
        for values in itertools.product(*fixed.values()):
            point = dict(zip(fixed, values))
            cells.append(_cell({**base, **point, "steps": 0, "eval_every": 1},
                               {"optimizer": ZERO_SHOT, **point}))
            seen.add(cells[-1].key)
    for opt in optimizers:
        axes = {**grid, **per_opt.get(opt, {})}
        for values in itertools.product(*axes.values()):
            varied = {"optimizer": opt, **dict(zip(axes, values))}
            cell = _cell({**base, **varied}, varied)
            if any(all(varied.get(k, cell.config.get(k)) == v for k, v in _norm(rule).items())
                   for rule in spec.get("exclude") or []):
                continue
            if cell.key not in seen:
                seen.add(cell.key)
                cells.append(cell)
    return cells


def select(cells: list[Cell], only: list[str]) -> list[Cell]:
    """The cells whose config (or grid label) matches every KEY=VALUE of ``only``."""
    import yaml

    wanted = {}
    for item in only:
        if "=" not in item:
            raise ValueError(f"--only expects KEY=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw)
        if isinstance(value, str):  # YAML 1.1 reads 3e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        wanted[key.replace("-", "_")] = value
    unknown = sorted(set(wanted) - set(cells[0].config)) if cells else []
    if unknown:
        raise ValueError(f"--only: unknown key(s) {unknown}; valid: {sorted(cells[0].config)}")
    return [c for c in cells if all({**c.config, **c.varied}.get(k) == v for k, v in wanted.items())]
