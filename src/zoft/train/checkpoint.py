"""Durable checkpoints: trainable weights (safetensors), optimizer state (with the ZO seed
stream), the step and the data order.

Every file is written to a temporary name, flushed to disk (fsync) and renamed, and its folder
is fsynced, so neither a killed process nor a power cut leaves a half-written file under a
final name. A checkpoint is complete once its manifest ``checkpoint-NNNNNNNN.json`` exists; it
is written last, after the weights and the optimizer state have been read back, and
``checkpoint.json`` is a copy of the newest one. The previous checkpoint is kept: if the newest
one cannot be read (a disk error, a truncated copy), :func:`load` falls back to it and says so.
Temporary files of a write that was killed are removed by :func:`remove_stale` when a run starts.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

MANIFEST = "checkpoint.json"
BEST = "best.safetensors"
KEEP = 2
"""Checkpoints kept: the newest and the one before it (the fallback)."""


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read; the message names the file."""


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # a platform without directory handles (Windows)
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic(path: Path, write: Callable[[str], None]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def write_json(path: Path, obj: Any) -> None:
    _atomic(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2, default=str) + "\n"))


def remove_stale(run_dir: Path) -> list[Path]:
    """Delete the temporary files of writes that were killed (``.NAME.XXXX.tmp``, and the
    suffix-less ones of zoft before it named them); returns them."""
    stale = [p for p in run_dir.glob(".*") if p.is_file() and any(
        p.name.startswith(f".{stem}") for stem in ("weights-", "optimizer-", "checkpoint", "best.",
                                                   "summary.json.", "config.json.", "eval-"))]
    for path in stale:
        path.unlink()
    return stale


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def nonfinite(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Names of the tensors holding a NaN or an infinity."""
    return [name for name, t in tensors.items() if not bool(torch.isfinite(t).all())]


def _names(step: int) -> tuple[str, str, str]:
    return f"weights-{step:08d}.safetensors", f"optimizer-{step:08d}.pt", f"checkpoint-{step:08d}.json"


def _verify(run_dir: Path, weights: str, optim: str, keys: set[str]) -> None:
    """Read the written files' structure back (safetensors header, the zip directory of torch.save)."""
    with safe_open(str(run_dir / weights), framework="pt") as f:
        if set(f.keys()) != keys:
            raise CheckpointError(f"{run_dir / weights}: written tensors do not read back")
    with zipfile.ZipFile(run_dir / optim) as z:
        if not z.namelist():
            raise CheckpointError(f"{run_dir / optim}: written optimizer state does not read back")


def save(run_dir: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
         extra: dict[str, Any], state: dict[str, torch.Tensor] | None = None) -> None:
    """Write the checkpoint of ``step``, then point the manifest at it; keep the previous one and
    drop older ones. ``state``: the trainable tensors to write (default: the model's own)."""
    weights, optim, manifest = _names(step)
    state = trainable_state(model) if state is None else state
    _atomic(run_dir / weights, lambda tmp: save_file(state, tmp))
    _atomic(run_dir / optim, lambda tmp: torch.save(optimizer.state_dict(), tmp))
    _verify(run_dir, weights, optim, set(state))
    record = {"step": step, "weights": weights, "optimizer": optim, **extra}
    write_json(run_dir / manifest, record)
    write_json(run_dir / MANIFEST, record)
    for old in manifests(run_dir)[KEEP:]:
        old.unlink()
    keep = kept_files(run_dir)
    for path in list(run_dir.glob("weights-*.safetensors")) + list(run_dir.glob("optimizer-*.pt")):
        if path.name not in keep:
            path.unlink()


def has_checkpoint(run_dir: Path) -> bool:
    return (run_dir / MANIFEST).exists() or bool(manifests(run_dir))


def manifests(run_dir: Path) -> list[Path]:
    """The per-step manifests, newest first."""
    return sorted(run_dir.glob("checkpoint-*.json"), reverse=True)


def kept_files(run_dir: Path) -> set[str]:
    names: set[str] = set()
    for path in [run_dir / MANIFEST, *manifests(run_dir)[:KEEP]]:
        record = read_manifest(path, quiet=True)
        names.update(record.get(k, "") for k in ("weights", "optimizer"))
    return names


def read_manifest(path: Path, quiet: bool = False) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text())
        if not isinstance(record, dict) or not {"step", "weights", "optimizer"} <= set(record):
            raise ValueError("not a checkpoint manifest")
        return record
    except (OSError, ValueError, UnicodeDecodeError) as err:
        if quiet:
            return {}
        raise CheckpointError(f"{path} is unreadable ({_short(err)})") from None


def _short(err: BaseException) -> str:
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; a missing, truncated or corrupt file is a CheckpointError naming it."""
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing") from None
    except Exception as err:  # safetensors raises SafetensorError, a plain Exception subclass
        raise CheckpointError(f"{path} is unreadable ({_short(err)}); truncated or corrupted?") from None


def _read_optimizer(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, weights_only=False)
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing") from None
    except Exception as err:
        raise CheckpointError(f"{path} is unreadable ({_short(err)}); truncated or corrupted?") from None


def load(run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
         log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Restore weights and optimizer state from the newest readable checkpoint; returns its
    manifest (step, data order, ...). When the newest cannot be read, the one before it is
    used and ``log`` says why; when none can, a CheckpointError names every file that failed."""
    candidates = [run_dir / MANIFEST, *manifests(run_dir)]
    if not any(p.exists() for p in candidates):
        raise FileNotFoundError(f"no checkpoint in {run_dir} (missing {MANIFEST})")
    errors: list[str] = []
    tried: set[int] = set()
    for path in candidates:
        if not path.exists():
            continue
        try:
            manifest = read_manifest(path)
            if manifest["step"] in tried:
                continue
            tried.add(manifest["step"])
            state = read_weights(run_dir / manifest["weights"])
            optim_state = _read_optimizer(run_dir / manifest["optimizer"])
        except CheckpointError as err:
            errors.append(str(err))
            continue
        _restore(run_dir, model, state)
        try:
            optimizer.load_state_dict(optim_state)
        except (ValueError, KeyError, RuntimeError) as err:
            raise CheckpointError(f"{run_dir / manifest['optimizer']} does not match the optimizer "
                                  f"({_short(err)})") from None
        if errors:
            for newer in manifests(run_dir):  # the unreadable ones: the run continues from here
                if read_manifest(newer, quiet=True).get("step", -1) > manifest["step"]:
                    newer.unlink()
        if errors and log is not None:
            log(f"note: the newest checkpoint could not be read ({'; '.join(errors)}); "
                f"resumed from the one of step {manifest['step']}")
        return manifest
    raise CheckpointError(f"no readable checkpoint in {run_dir}: {'; '.join(errors)}")


def _restore(run_dir: Path, model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = sorted(set(state) ^ {n for n, p in params.items() if p.requires_grad})
    if missing:
        raise CheckpointError(f"checkpoint {run_dir} does not match the model: {missing[:5]}")
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


def load_weights(path: Path, model: torch.nn.Module) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in read_weights(path).items():
            params[name].copy_(value)


def write_best(run_dir: Path, model: torch.nn.Module) -> None:
    """Trainable weights of the best dev evaluation so far (test is scored with them)."""
    _atomic(run_dir / BEST, lambda tmp: save_file(trainable_state(model), tmp))
