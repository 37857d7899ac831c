"""``zoft eval``: a trained run's weights, or a model zero-shot, scored on dev or test."""

from __future__ import annotations

from pathlib import Path

from zoft.train import checkpoint
from zoft.train.config import TrainConfig
from zoft.train.export import run_weights
from zoft.train.metering import peak_memory_bytes, reset_peak_memory
from zoft.train.run_files import read_run_config
from zoft.train.session import Session


def evaluate_command(run_dir: str | None, cfg: TrainConfig, split: str = "test") -> dict:
    if run_dir is not None:
        cfg = read_run_config(Path(run_dir))
    else:
        cfg.peft = "full"  # zero-shot: the model as loaded, nothing added
    session = Session.build(cfg, train=False)
    source = "zero-shot"
    if run_dir is not None:
        weights = run_weights(Path(run_dir))
        checkpoint.load_weights(weights, session.model)
        source = str(weights)
    examples = session.splits.test if split == "test" else session.splits.dev
    reset_peak_memory(session.device)  # inference peak: model loading does not count
    metrics = session.evaluate(examples)
    result = {"model": cfg.model, "task": cfg.task, "peft": cfg.peft, "split": split, "weights": source,
              "examples": len(examples), "metrics": metrics,
              "peak_memory_bytes": peak_memory_bytes(session.device)}
    if run_dir is not None:
        checkpoint.write_json(Path(run_dir) / f"eval-{split}.json", result)
    return result
