"""The files of a run directory: config.json, metrics.jsonl, train.log, summary.json."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import torch
from tqdm import tqdm

from zoft.train import checkpoint
from zoft.train.precision import COMPUTE
from zoft.train.config import TrainConfig


def read_run_config(run_dir: Path) -> TrainConfig:
    """The TrainConfig of the run in ``run_dir`` (its config.json); one-line errors naming the file."""
    path = run_dir / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no config.json)")
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"{path} is unreadable ({str(err).splitlines()[0]}); truncated or corrupted?") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path} is not a run configuration (expected a JSON object)")
    return TrainConfig.from_dict(values, source=str(path))


PAUSED = 75
"""zoft train's exit status when --pause-after-passes ended a piece of a run (EX_TEMPFAIL)."""


def finished_summary(run_dir: Path) -> dict | None:
    """The summary of a finished run in ``run_dir``; None when there is none (or it failed)."""
    path = run_dir / "summary.json"
    if path.exists():
        summary = json.loads(path.read_text())
        if summary.get("status") == "finished":
            return summary
    return None


class RunFiles:
    """``active=False`` (data-parallel ranks other than 0): nothing is written or printed."""

    def __init__(self, run_dir: Path, cfg: TrainConfig, resume: bool, active: bool = True,
                 processes: int = 1) -> None:
        self.dir = run_dir
        self.cfg = cfg
        self.active = active
        self.processes = processes
        if not resume and (run_dir / checkpoint.MANIFEST).exists():
            raise FileExistsError(f"{run_dir} already holds a run; use --resume {run_dir} or another --out")
        self.metrics_path = run_dir / "metrics.jsonl"
        self.writer = None
        self.stale: list[Path] = []
        if active and not resume:
            if finished_summary(run_dir) is not None:
                raise FileExistsError(f"{run_dir} holds a finished run (summary.json); use another --out")
            if self.metrics_path.exists():  # a run stopped before its first checkpoint: start over
                self.metrics_path.unlink()
        if active:
            try:
                run_dir.mkdir(parents=True, exist_ok=True)
                probe = run_dir / ".zoft-write-test"
                probe.touch()
                probe.unlink()
            except OSError as err:
                raise ValueError(f"cannot write the run directory {run_dir} ({err.strerror or err}); "
                                 "choose another --out") from None
            self.stale = checkpoint.remove_stale(run_dir)
            if not resume:  # a resume writes it once its checkpoint has loaded (write_config)
                self.write_config()
            self.writer = self._tensorboard() if cfg.tensorboard else None

    def write_config(self) -> None:
        if self.active:
            checkpoint.write_json(self.dir / "config.json", self.cfg.to_dict())

    def _tensorboard(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            self.log("note: --tensorboard needs the tensorboard package (pip install tensorboard); skipped")
            return None
        return SummaryWriter(str(self.dir / "tensorboard"))

    def log(self, message: str) -> None:
        if not self.active:
            return
        tqdm.write(message)
        with open(self.dir / "train.log", "a") as f:
            f.write(message + "\n")

    def metric(self, **row) -> None:
        if not self.active:
            return
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.writer is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, row["step"])

    def truncate_metrics(self, step: int) -> None:
        """Drop rows logged after the checkpoint: the resumed run logs them again."""
        if self.active and self.metrics_path.exists():
            rows = [line for line in self.metrics_path.read_text().splitlines()
                    if line and json.loads(line)["step"] <= step]
            self.metrics_path.write_text("".join(r + "\n" for r in rows))

    def summary(self, **fields) -> dict:
        summary = {"model": self.cfg.model, "task": self.cfg.task, "peft": self.cfg.peft,
                   "optimizer": self.cfg.optimizer, "processes": self.processes,
                   "dtype": self.cfg.dtype, "compute_dtype": COMPUTE.get(self.cfg.dtype, self.cfg.dtype), **fields,
                   "machine": {"platform": platform.platform(), "torch": torch.__version__,
                               "device": str(fields.get("device", ""))}}
        if self.active:
            checkpoint.write_json(self.dir / "summary.json", summary)
        return summary

    def fail(self, message: str) -> dict:
        self.log(message)
        return self.summary(status="failed", error=message)

    def finish(self, session, meter, state) -> dict:
        if not self.active:  # rank 0 scores the test set and writes the summary
            return {"status": "finished", "steps": state["step"]}
        best = self.dir / checkpoint.BEST
        if best.exists():
            checkpoint.load_weights(best, session.model)
        test = session.evaluate(session.splits.test)
        trainable, total = session.parameter_counts()
        metric_name = session.task.metric_name
        summary = self.summary(
            status="finished", steps=state["step"], forward_passes=meter.forward_passes,
            wall_time_s=round(meter.elapsed, 3), peak_memory_bytes=meter.peak_memory(),
            trainable_params=trainable, total_params=total, best_dev_metric=state["best_dev"],
            test_metric=test.get(metric_name), metric_name=metric_name, test_metrics=test,
            device=session.device, **({"zero_shot": state["zero_shot"]} if state.get("zero_shot") else {}))
        self.log(f"done: {outcome(summary)}; files in {self.dir}")
        if self.writer is not None:
            self.writer.close()
        return summary


def outcome(summary: dict) -> str:
    """The run's result in one line: test (and best dev), beside zero-shot where it was scored."""
    name, zero = summary["metric_name"], summary.get("zero_shot")
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"
    dev = summary.get("best_dev_metric")
    if zero:
        return (f"{name} zero-shot -> trained: test {fmt(zero['test_metric'])} -> {fmt(summary['test_metric'])}, "
                f"dev {fmt(zero['dev_metric'])} -> {fmt(dev)} (best dev weights)")
    return f"{name} on test {fmt(summary['test_metric'])}" + (f", best dev {fmt(dev)}" if dev is not None else "")
