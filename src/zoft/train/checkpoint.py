"""Atomic checkpoints: trainable weights (safetensors), optimizer state (with the ZO seed
stream), the step and the data order. Every file is written to a temporary name and renamed;
the manifest ``checkpoint.json`` is written last, so a crash leaves the previous checkpoint
intact and complete."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

MANIFEST = "checkpoint.json"


def _atomic(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: Path, obj: Any) -> None:
    _atomic(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2, default=str) + "\n"))


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save(run_dir: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
         extra: dict[str, Any], state: dict[str, torch.Tensor] | None = None) -> None:
    """Write checkpoint files for ``step`` then point the manifest at them; drop older ones.
    ``state``: the trainable tensors to write (default: the model's own)."""
    weights, optim = f"weights-{step:08d}.safetensors", f"optimizer-{step:08d}.pt"
    state = trainable_state(model) if state is None else state
    _atomic(run_dir / weights, lambda tmp: save_file(state, tmp))
    _atomic(run_dir / optim, lambda tmp: torch.save(optimizer.state_dict(), tmp))
    write_json(run_dir / MANIFEST, {"step": step, "weights": weights, "optimizer": optim, **extra})
    for old in list(run_dir.glob("weights-*.safetensors")) + list(run_dir.glob("optimizer-*.pt")):
        if old.name not in (weights, optim):
            old.unlink()


def load(run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore weights and optimizer state; returns the manifest (step, data order, ...)."""
    path = run_dir / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint in {run_dir} (missing {MANIFEST})")
    manifest = json.loads(path.read_text())
    state = load_file(str(run_dir / manifest["weights"]))
    params = dict(model.named_parameters())
    missing = sorted(set(state) ^ {n for n, p in params.items() if p.requires_grad})
    if missing:
        raise ValueError(f"checkpoint {run_dir} does not match the model: {missing[:5]}")
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)
    optimizer.load_state_dict(torch.load(run_dir / manifest["optimizer"], weights_only=False))
    return manifest


def load_weights(path: Path, model: torch.nn.Module) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in load_file(str(path)).items():
            params[name].copy_(value)


BEST = "best.safetensors"


def write_best(run_dir: Path, model: torch.nn.Module) -> None:
    """Trainable weights of the best dev evaluation so far (test is scored with them)."""
    _atomic(run_dir / BEST, lambda tmp: save_file(trainable_state(model), tmp))
