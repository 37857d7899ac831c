"""The training loop of ``zoft train``: one screen, no framework trainer underneath."""

from __future__ import annotations

import json
import signal
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from tqdm import tqdm

from zoft.core import NonFiniteLossError
from zoft.train import checkpoint
from zoft.train.config import TrainConfig
from zoft.train.data import micro_batch
from zoft.train.metering import Meter
from zoft.train.run_files import RunFiles
from zoft.train.session import Session


def train(cfg: TrainConfig, resume: bool = False) -> dict:
    files = RunFiles(Path(cfg.out), cfg, resume)
    s = Session.build(cfg, log=files.log)
    meter, state = Meter(s.model, s.device), {"step": 0, "best_dev": None}
    if resume and (files.dir / checkpoint.MANIFEST).exists():
        state = checkpoint.load(files.dir, s.model, s.optimizer)
        meter.forward_passes, meter.elapsed = state["forward_passes"], state["wall_time_s"]
        files.truncate_metrics(state["step"])
    save = lambda: checkpoint.save(files.dir, state["step"], s.model, s.optimizer, {
        "forward_passes": meter.forward_passes, "wall_time_s": meter.elapsed, "seed": cfg.seed,
        "data_order": "zoft.train.data.micro_batch(seed, step * grad_accum + k)",
        "best_dev": state["best_dev"]})
    spent = lambda: cfg.forward_budget > 0 and meter.forward_passes >= cfg.forward_budget
    bar = tqdm(total=cfg.steps, initial=state["step"], desc=f"{cfg.optimizer} {cfg.task}", unit="step")
    with deferred_interrupt() as interrupted:
        while state["step"] < cfg.steps and not interrupted() and not spent():
            step = state["step"]
            batches = [s.batch(micro_batch(s.splits.train, step * cfg.grad_accum + k, cfg.batch_size, cfg.seed))
                       for k in range(cfg.grad_accum)]
            meter.counting = True
            meter.start()
            try:
                loss = take_step(s, batches)
            except NonFiniteLossError as err:
                return files.fail(f"stopped at step {step + 1}: {err}; the last good checkpoint is kept")
            finally:
                meter.stop()
                meter.counting = False
            state["step"] = step + 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
            if state["step"] % cfg.log_every == 0 or state["step"] == cfg.steps:
                files.metric(step=state["step"], loss=loss, lr=s.optimizer.param_groups[0]["lr"],
                             forward_passes=meter.forward_passes, wall_time_s=round(meter.elapsed, 4),
                             peak_memory_bytes=meter.peak_memory())
            if cfg.eval_every and state["step"] % cfg.eval_every == 0:
                state["best_dev"] = evaluate_dev(s, files, state)
            if state["step"] % cfg.save_every == 0:
                save()
    bar.close()
    if cfg.eval_every and (state["step"] % cfg.eval_every or not state["step"]) and not interrupted():
        state["best_dev"] = evaluate_dev(s, files, state)  # the end of training is always scored
    save()
    if interrupted():
        files.log(f"interrupted: checkpoint saved at step {state['step']}; continue with --resume {files.dir}")
        raise KeyboardInterrupt
    return files.finish(s, meter, state)


def take_step(s: Session, batches) -> float:
    """One optimizer step over grad_accum micro-batches; returns the loss as a float."""
    if s.closure_driven:  # ZO: every micro-batch at the same perturbation (forward-grad: tangent)
        return float(s.optimizer.step(lambda: torch.stack([s.objective.loss(b) for b in batches]).mean()))
    s.optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for b in batches:
        loss = s.objective.loss(b) / len(batches)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"loss is {float(loss)}; no update was made")
        loss.backward()
        total += float(loss.detach())
    s.optimizer.step()
    return total


def evaluate_dev(s: Session, files: RunFiles, state: dict) -> float | None:
    metrics = s.evaluate(s.splits.dev)
    value = next(iter(metrics.values()), None)
    files.metric(step=state["step"], **{f"dev_{k}": v for k, v in metrics.items()})
    if value is not None and (state["best_dev"] is None or value > state["best_dev"]):
        checkpoint.write_best(files.dir, s.model)
        return value
    return state["best_dev"]


@contextmanager
def deferred_interrupt() -> Iterator:
    """Ctrl-C sets a flag read between steps, so parameters are never saved mid-perturbation."""
    flag = {"hit": False}

    def handler(signum, frame):
        if flag["hit"]:
            raise KeyboardInterrupt
        flag["hit"] = True
        tqdm.write("interrupt: finishing this step and saving a checkpoint (Ctrl-C again to abort)")

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: interrupts are not deferred
        previous = None
    try:
        yield lambda: flag["hit"]
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
