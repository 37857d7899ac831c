"""The training loop of ``zoft train``: one screen, no framework trainer underneath."""

from __future__ import annotations

import math
import signal
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Iterator

import torch
from tqdm import tqdm

from zoft.core import NonFiniteLossError
from zoft.distributed import Comm, from_env
from zoft.optim.schedule import check_schedule, lr_factor, set_lr_factor
from zoft.train import checkpoint
from zoft.train.config import TrainConfig
from zoft.train.data import micro_batch
from zoft.train.metering import Meter
from zoft.train.run_files import RunFiles
from zoft.train.session import Session, resolve_precision


def train(cfg: TrainConfig, resume: bool = False, pause_after: int | None = None) -> dict:
    """Run (or resume) a training run; under torchrun, one data-parallel rank of it.
    ``pause_after``: end this piece once it has run that many training forward passes (a
    checkpoint is saved; ``--resume`` continues), returning ``{"status": "paused", ...}``."""
    if pause_after is not None and pause_after < 1:
        raise ValueError(f"--pause-after-passes must be at least 1, got {pause_after}")
    comm = from_env()
    try:
        return _train(cfg, resume, comm, pause_after)
    finally:
        comm.close()


def _train(cfg: TrainConfig, resume: bool, comm: Comm, pause_after: int | None = None) -> dict:
    if comm.world > 1:
        check_data_parallel(cfg, comm.world)
    check_schedule(cfg.lr_schedule, cfg.warmup_steps, cfg.steps)
    notes: list[str] = []
    cfg = resolve_precision(cfg, log=notes.append)  # config.json records the concrete dtype
    files = RunFiles(Path(cfg.out), cfg, resume, active=comm.main, processes=comm.world)
    for note in notes:
        files.log(note)
    if files.stale:
        files.log(f"removed {len(files.stale)} temporary file(s) of an interrupted write: "
                  + ", ".join(p.name for p in files.stale))
    s = Session.build(cfg, log=files.log)
    if not s.closure_driven:
        s.objective.runner = comm.wrap_for_backprop(s.model)
    meter, state = Meter(s.model, s.device), {"step": 0, "best_dev": None}
    if resume and checkpoint.has_checkpoint(files.dir):
        state = checkpoint.load(files.dir, s.model, s.optimizer, log=files.log)
        if s.masters:
            s.masters.load(files.dir / state["weights"])
        meter.forward_passes, meter.elapsed = state["forward_passes"], state["wall_time_s"]
        files.truncate_metrics(state["step"])
        state["saved"] = state["step"]
    if resume:
        files.write_config()  # only now: a resume that fails leaves the run as it was

    def kept() -> str:
        if state.get("saved") is None:
            return f"no checkpoint had been written yet (--save-every {cfg.save_every}), so there is nothing to resume"
        return f"the checkpoint of step {state['saved']} is kept (--resume {files.dir} continues from it)"

    def finite_or_fail() -> dict | None:
        """The failed summary when the update made a trainable tensor non-finite (no file is
        written from such weights), else None. Every rank checks its own identical copy."""
        tensors = s.trainable_state()
        bad = checkpoint.nonfinite(tensors)
        if not bad:
            return None
        return files.fail(f"stopped at step {state['step']}: its update made {len(bad)} of {len(tensors)} "
                          f"trainable tensors non-finite (first: {bad[0]}), although its loss was finite; "
                          f"nothing was saved from them; {kept()}. Try a smaller --lr")

    def save() -> None:
        if comm.main:
            checkpoint.save(files.dir, state["step"], s.model, s.optimizer, {
                "forward_passes": meter.forward_passes, "wall_time_s": meter.elapsed, "seed": cfg.seed,
                "data_order": "zoft.train.data.micro_batch(seed, step * grad_accum + k)",
                "best_dev": state["best_dev"], "zero_shot": state.get("zero_shot")}, state=s.trainable_state())
        state["saved"] = state["step"]
    spent = lambda: cfg.forward_budget > 0 and meter.forward_passes >= cfg.forward_budget
    # a forward budget usually ends the run long before cfg.steps: show progress against it
    by_budget = cfg.forward_budget > 0
    bar = tqdm(total=cfg.forward_budget if by_budget else cfg.steps,
               initial=meter.forward_passes if by_budget else state["step"],
               desc=f"{cfg.optimizer} {cfg.task}", unit="fwd" if by_budget else "step", disable=not comm.main)
    if cfg.eval_zero_shot and state["step"] == 0 and not resume:
        state["zero_shot"] = score_zero_shot(s, files, state, comm)
    stop = False
    piece_end = None if pause_after is None else meter.forward_passes + pause_after
    paused = lambda: piece_end is not None and meter.forward_passes >= piece_end
    with deferred_interrupt() as interrupted:
        while (state["step"] < cfg.steps and not spent() and not paused()
               and not (stop := comm.any(interrupted()))):
            step = state["step"]
            batches = [s.batch(comm.shard(micro_batch(s.splits.train, step * cfg.grad_accum + k,
                                                      cfg.batch_size, cfg.seed)))
                       for k in range(cfg.grad_accum)]
            set_lr_factor(s.optimizer, lr_factor(cfg.lr_schedule, step, cfg.steps, cfg.warmup_steps))
            meter.counting = True
            meter.start()
            try:
                loss = take_step(s, batches, comm)
            except NonFiniteLossError as err:
                return files.fail(f"stopped at step {step + 1}: {err}; {kept()}")
            finally:
                meter.stop()
                meter.counting = False
                if s.masters:
                    s.masters.sync()  # evaluation and checkpoints see the updated weights
            state["step"] = step + 1
            bar.update(meter.forward_passes - bar.n if by_budget else 1)
            bar.set_postfix(step=state["step"], loss=f"{loss:.4f}")
            if state["step"] % cfg.log_every == 0 or state["step"] == cfg.steps:
                comm_bytes = {"comm_bytes": comm.bytes} if comm.world > 1 else {}
                files.metric(step=state["step"], loss=loss, lr=s.optimizer.param_groups[0]["lr"],
                             forward_passes=meter.forward_passes, wall_time_s=round(meter.elapsed, 4),
                             peak_memory_bytes=meter.peak_memory(), **comm_bytes)
            due_eval = cfg.eval_every and state["step"] % cfg.eval_every == 0
            due_save = state["step"] % cfg.save_every == 0
            if (due_eval or due_save) and (failed := finite_or_fail()) is not None:
                return failed
            if due_eval:
                state["best_dev"] = evaluate_dev(s, files, state, comm)
            if due_save:
                save()
    bar.close()
    if (failed := finite_or_fail()) is not None:
        return failed
    pause = not stop and paused() and state["step"] < cfg.steps and not spent()  # a piece, not the end
    if cfg.eval_every and (state["step"] % cfg.eval_every or not state["step"]) and not stop and not pause:
        state["best_dev"] = evaluate_dev(s, files, state, comm)  # the end of training is always scored
    save()
    if stop:
        files.log(f"interrupted: checkpoint saved at step {state['step']}; continue with --resume {files.dir}")
        raise KeyboardInterrupt
    if pause:
        files.log(f"paused after {pause_after} forward passes: checkpoint saved at step {state['step']} "
                  f"({meter.forward_passes} passes in all); continue with --resume {files.dir}")
        return {"status": "paused", "step": state["step"], "forward_passes": meter.forward_passes}
    return files.finish(s, meter, state)


def check_data_parallel(cfg: TrainConfig, world: int) -> None:
    if cfg.offload_blocks:
        raise ValueError("--offload-blocks runs in one process (its two perturbed forwards take turns per "
                         "block); launch it without torchrun")
    if not cfg.traits().data_parallel:
        raise ValueError(f"{cfg.optimizer} does not run data-parallel (its jvp cannot pass through an "
                         "all-reduce); launch it as one process")
    if cfg.batch_size < world:
        raise ValueError(f"--batch-size {cfg.batch_size} is the global batch and must be at least the "
                         f"number of processes ({world}), so that every rank has examples")


def take_step(s: Session, batches, comm: Comm = Comm()) -> float:
    """One optimizer step over grad_accum micro-batches (this rank's share of each); returns
    the loss of the whole batch, the mean over micro-batches of their mean loss."""
    counts = comm.all_reduce(torch.tensor([float(s.objective.count(b)) for b in batches], dtype=torch.float64))
    if s.closure_driven:  # ZO: every micro-batch at the same perturbation (forward-grad: tangent)
        def closure() -> torch.Tensor:  # ranks exchange one (loss sum) per micro-batch and query
            sums = torch.stack([s.objective.loss_sum(b).double() for b in batches])
            return (comm.all_reduce(sums) / counts).mean()

        return float(s.offload.step(closure) if s.offload is not None else s.optimizer.step(closure))
    s.optimizer.zero_grad(set_to_none=True)
    total = 0.0
    runner = s.objective.runner
    for k, b in enumerate(batches):
        last = k == len(batches) - 1
        with nullcontext() if last or not hasattr(runner, "no_sync") else runner.no_sync():
            local = s.objective.loss_sum(b)
            value = float(comm.all_reduce(local.detach().double().reshape(1))) / float(counts[k])
            if not math.isfinite(value):
                raise NonFiniteLossError(f"loss is {value}; no update was made")
            # DistributedDataParallel averages gradients over ranks: scale by world / count
            (local * (comm.world / float(counts[k]) / len(batches))).backward()
        total += value / len(batches)
    s.optimizer.step()
    return total


def score_zero_shot(s: Session, files: RunFiles, state: dict, comm: Comm = Comm()) -> dict:
    """Dev and test of the untrained model, the baseline that the end of the run is read
    against; the dev score is the first best-dev candidate (if no step beats it, the
    untrained weights are the ones kept)."""
    state["best_dev"] = evaluate_dev(s, files, state, comm)
    test = s.evaluate(s.splits.test) if comm.main else {}  # rank 0 writes it, as finish() scores test
    name = s.task.metric_name
    files.log(f"zero-shot: {name} on dev {state['best_dev']}, on test {test.get(name)}")
    return {"dev_metric": state["best_dev"], "test_metric": test.get(name)}


def evaluate_dev(s: Session, files: RunFiles, state: dict, comm: Comm = Comm()) -> float | None:
    """Every rank scores dev (identical models; no rank waits for another); rank 0 writes."""
    metrics = s.evaluate(s.splits.dev)
    value = next(iter(metrics.values()), None)
    files.metric(step=state["step"], **{f"dev_{k}": v for k, v in metrics.items()})
    if value is not None and (state["best_dev"] is None or value > state["best_dev"]):
        if comm.main:
            checkpoint.write_best(files.dir, s.model)
        return value
    return state["best_dev"]


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
"""Ctrl-C, and the SIGTERM that schedulers (Slurm, Kubernetes, systemd) send before they kill."""


@contextmanager
def deferred_interrupt() -> Iterator:
    """Ctrl-C or SIGTERM sets a flag read between steps, so that the step finishes and a
    checkpoint is saved (parameters are never saved mid-perturbation); a second one aborts."""
    flag = {"hit": False}

    def handler(signum, frame):
        if flag["hit"]:
            raise KeyboardInterrupt
        flag["hit"] = True
        tqdm.write(f"{signal.Signals(signum).name}: finishing this step and saving a checkpoint "
                   "(send it again to abort)")

    previous = {}
    for signum in STOP_SIGNALS:
        try:
            previous[signum] = signal.signal(signum, handler)
        except ValueError:  # not the main thread: interrupts are not deferred
            pass
    try:
        yield lambda: flag["hit"]
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
