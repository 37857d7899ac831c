"""One ``zoft train`` process of a bench script: SST-2-shaped training, no dev or test scoring."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path


def launch_train(args, run_dir: Path, env: dict[str, str], seed: int, extra: list[str] = ()) -> subprocess.Popen:
    """Start ``zoft train`` of ``args.model/task/peft/optimizer/lr/steps`` (batch 16, 1000 train
    examples) in a fresh ``run_dir``; its stderr goes to ``run_dir``'s sibling ``NAME.log``."""
    shutil.rmtree(run_dir, ignore_errors=True)
    argv = [sys.executable, "-m", "zoft", "train", "--model", args.model, "--task", args.task,
            "--peft", args.peft, "--optimizer", args.optimizer, "--lr", str(args.lr), "--steps", str(args.steps),
            "--batch-size", "16", "--train-size", "1000", "--dev-size", "0", "--test-size", "0",
            "--no-eval-zero-shot", "--seed", str(seed), "--out", str(run_dir), *extra]
    if args.data_dir:
        argv += ["--data-dir", args.data_dir]
    with open(run_dir.parent / f"{run_dir.name}.log", "w") as log:  # the child keeps its own descriptor
        return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=log)
