"""What happens when a user makes a mistake, a run goes non-finite, a file is corrupt or the
process is stopped: one line that names the problem, exit code 2, no traceback, nothing in the
run folder changed, and never a checkpoint written from non-finite weights."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from zoft.cli import main
from zoft.train import checkpoint
from zoft.train.config import TrainConfig
from zoft.train.loop import train

TINY = ["--model", "tiny-llama", "--task", "sentiment-demo", "--train-size", "16", "--dev-size", "4",
        "--test-size", "4", "--batch-size", "4", "--max-length", "48", "--dtype", "fp32"]
TINY_CFG = dict(model="tiny-llama", task="sentiment-demo", train_size=16, dev_size=4, test_size=4,
                batch_size=4, max_length=48, dtype="fp32", log_every=1)
RUN_CFG = dict(TINY_CFG, peft="full", steps=4, save_every=2, eval_every=2)


def snapshot(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A 4-step full fine-tuning run with checkpoints at steps 2 and 4 (copied per test)."""
    run = tmp_path_factory.mktemp("base") / "run"
    assert train(TrainConfig(**RUN_CFG, out=str(run)))["status"] == "finished"
    (run / "summary.json").unlink()  # an unfinished run, as after an interrupt: --resume is allowed
    return run


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    import shutil

    shutil.copytree(finished_run, tmp_path / "run")
    return tmp_path / "run"


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 3)])


def newest(run: Path, key: str) -> Path:
    return run / json.loads((run / "checkpoint.json").read_text())[key]


def only_newest_checkpoint(run: Path) -> None:
    """Leave one checkpoint (as a run saved once has), so that a corrupt file has no fallback."""
    for old in checkpoint.manifests(run)[1:]:
        record = json.loads(old.read_text())
        for key in ("weights", "optimizer"):
            (run / record[key]).unlink()
        old.unlink()


# Each row: the arguments (RUN stands for a copy of a run folder), what to do to that folder
# first, and a fragment the one-line message must contain.
BAD_INPUTS = [
    (["--batch-size", "0"], None, "invalid batch_size 0"),
    (["--grad-accum", "0"], None, "invalid grad_accum 0"),
    (["--save-every", "0"], None, "invalid save_every 0"),
    (["--log-every", "0"], None, "invalid log_every 0"),
    (["--steps", "-5"], None, "invalid steps -5"),
    (["--save-every", "-3"], None, "invalid save_every -3"),
    (["--eval-every", "-1"], None, "invalid eval_every -1"),
    (["--forward-budget", "-5"], None, "invalid forward_budget -5"),
    (["--max-length", "0"], None, "invalid max_length 0"),
    (["--train-size", "0"], None, "invalid train_size 0"),
    (["--lr", "inf"], None, "invalid lr inf"),
    (["--lr", "nan"], None, "invalid lr nan"),
    (["--lr", "-1"], None, "invalid lr -1.0"),
    (["--eps", "inf"], None, "invalid eps inf"),
    (["--eps", "0"], None, "invalid eps 0.0"),
    (["--q", "0"], None, "invalid q 0"),
    (["--warmup-steps", "-1"], None, "invalid warmup_steps -1"),
    (["--optimizer", "adamw"], None, "unknown optimizer 'adamw'"),
    (["--lr-schedule", "step"], None, "unknown lr schedule 'step'"),
    (["--dtype", "int3"], None, "int3"),
    (["--model", "nobody-xyz/no-such-model"], None, "nobody-xyz/no-such-model"),
    (["--model", "./no/such/folder"], None, "no such file or folder"),
    (["--config", "CFG"], "lr: abc\n", "invalid lr 'abc'"),
    (["--config", "CFG"], "lr: [1, 2\n", "CFG"),
    (["--config", "CFG"], "seed: 2.5\n", "invalid seed 2.5"),
    (["--out", "FILE/run"], None, "cannot write the run directory"),
    (["--resume", "RUN"], "truncate weights", "weights-00000004.safetensors is unreadable"),
    (["--resume", "RUN"], "truncate optimizer", "optimizer-00000004.pt is unreadable"),
    (["--resume", "RUN"], "truncate config", "config.json is unreadable"),
    (["--resume", "RUN"], "truncate manifest", "checkpoint-00000004.json is unreadable"),
    (["--resume", "RUN", "--lr", "0.5"], None, "--lr cannot change"),
    (["--resume", "RUN", "--out", "elsewhere"], None, "--out cannot change"),
    (["--resume", "NOT_A_RUN"], None, "is not a run directory"),
    (["eval", "RUN"], "truncate best", "best.safetensors is unreadable"),
    (["eval", "RUN"], "truncate config", "config.json is unreadable"),
]


def _prepare(tmp_path: Path, run: Path, argv: list[str], setup: str | None) -> list[str]:
    if setup and setup.startswith("truncate"):
        what = setup.split()[1]
        if what in ("weights", "optimizer", "manifest"):
            only_newest_checkpoint(run)
        if what == "manifest":
            truncate(run / "checkpoint.json")
            truncate(checkpoint.manifests(run)[0])
        else:
            truncate({"weights": newest(run, "weights"), "optimizer": newest(run, "optimizer"),
                      "config": run / "config.json", "best": run / checkpoint.BEST}[what])
    (tmp_path / "file").write_text("a file, not a folder\n")
    if setup and not setup.startswith("truncate"):
        (tmp_path / "cfg.yaml").write_text(setup)
    subs = {"RUN": str(run), "CFG": str(tmp_path / "cfg.yaml"), "FILE/run": str(tmp_path / "file" / "run"),
            "NOT_A_RUN": str(tmp_path), "elsewhere": str(tmp_path / "elsewhere")}
    argv = [subs.get(a, a) for a in argv]
    if argv[0] == "eval":
        return argv
    return ["train", *argv] if "--resume" in argv else ["train", *TINY, "--steps", "2", "--out",
                                                        str(tmp_path / "new"), *argv]


@pytest.mark.parametrize("argv, setup, message", BAD_INPUTS, ids=[" ".join(r[0]) + (f" [{r[1].strip()}]" if r[1] else "")
                                                                   for r in BAD_INPUTS])
def test_a_bad_input_is_one_line_naming_it_and_changes_nothing(run_copy, tmp_path, capsys, monkeypatch,
                                                                argv, setup, message):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # an unknown hub id fails at once, offline or not
    full = _prepare(tmp_path, run_copy, argv, setup)
    message = message.replace("CFG", "cfg.yaml")
    before = snapshot(run_copy)
    code = main(full)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("zoft: error:")]
    assert code == 2, err
    assert len(errors) == 1 and message in errors[0], err
    assert "Traceback" not in err
    assert snapshot(run_copy) == before
    assert not (tmp_path / "new" / "checkpoint.json").exists()


def test_a_bad_value_from_the_shell_gives_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "zoft", "train", *TINY, "--batch-size", "0",
                           "--out", str(tmp_path / "r")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["zoft: error: invalid batch_size 0; must be an integer >= 1"]


def test_numbers_written_as_text_in_a_config_file_are_numbers(tmp_path):
    (tmp_path / "c.yaml").write_text("lr: 1e-3\neps: 1e-2\n")  # YAML 1.1 reads these as strings
    from zoft.cli import build_parser, config_from_args

    cfg = config_from_args(build_parser().parse_args(["train", "--config", str(tmp_path / "c.yaml")]))
    assert cfg.lr == 1e-3 and cfg.eps == 1e-2


@pytest.mark.parametrize("dtype, lr", [("fp32", 1e38), ("bf16", 1e38)])
def test_an_update_that_overflows_is_never_checkpointed(tmp_path, dtype, lr):
    cfg = TrainConfig(**{**TINY_CFG, "dtype": dtype}, peft="full", lr=lr, steps=30, save_every=1,
                      out=str(tmp_path / "run"))
    summary = train(cfg)
    assert summary["status"] == "failed"
    assert "stopped at step 1: its update made" in summary["error"] and "non-finite" in summary["error"]
    assert "no checkpoint had been written yet (--save-every 1)" in summary["error"]
    assert not checkpoint.has_checkpoint(tmp_path / "run")


def test_after_a_non_finite_update_the_kept_checkpoint_is_finite_and_named(tmp_path, monkeypatch):
    import zoft.train.loop as loop

    real, calls = loop.take_step, {"n": 0}

    def poisoned(session, batches, *args):
        loss = real(session, batches, *args)
        calls["n"] += 1
        if calls["n"] == 3:  # step 3's update overflows one tensor; its loss was finite
            with torch.no_grad():
                next(p for p in session.model.parameters() if p.requires_grad).fill_(float("inf"))
        return loss

    monkeypatch.setattr(loop, "take_step", poisoned)
    run = tmp_path / "run"
    summary = train(TrainConfig(**TINY_CFG, peft="full", steps=6, save_every=2, out=str(run)))
    assert summary["status"] == "failed"
    assert "the checkpoint of step 2 is kept" in summary["error"]
    assert json.loads((run / "checkpoint.json").read_text())["step"] == 2
    weights = checkpoint.read_weights(newest(run, "weights"))
    assert not checkpoint.nonfinite(weights)


def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous_one(run_copy, tmp_path, capsys):
    truncate(newest(run_copy, "weights"))
    assert main(["train", "--resume", str(run_copy)]) == 0
    out = capsys.readouterr().out
    assert "resumed from the one of step 2" in out and "weights-00000004.safetensors is unreadable" in out
    # the resumed run redid steps 3 and 4 exactly: the same weights as the intact run
    straight = tmp_path / "straight"
    train(TrainConfig(**RUN_CFG, out=str(straight)))
    a, b = checkpoint.read_weights(newest(run_copy, "weights")), checkpoint.read_weights(newest(straight, "weights"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_truncated_checkpoint_json_is_read_from_its_step_copy(run_copy, capsys):
    truncate(run_copy / "checkpoint.json")
    assert main(["train", "--resume", str(run_copy), "--steps", "5"]) == 0
    assert json.loads((run_copy / "checkpoint.json").read_text())["step"] == 5


def test_two_checkpoints_are_kept(run_copy):
    assert [p.name for p in checkpoint.manifests(run_copy)] == ["checkpoint-00000004.json", "checkpoint-00000002.json"]
    assert sorted(p.name for p in run_copy.glob("weights-*")) == ["weights-00000002.safetensors",
                                                                  "weights-00000004.safetensors"]


def test_stale_temporaries_of_a_killed_write_are_removed(run_copy, capsys):
    stale = [run_copy / ".optimizer-00000006.pt.abc123.tmp", run_copy / ".weights-00000006.safetensors.x1y2z3"]
    for path in stale:
        path.write_bytes(b"\0" * 1024)
    (run_copy / ".keep-me").write_text("not zoft's")
    assert main(["train", "--resume", str(run_copy)]) == 0
    assert not any(p.exists() for p in stale) and (run_copy / ".keep-me").exists()
    assert "removed 2 temporary file(s)" in capsys.readouterr().out


def test_a_failed_resume_leaves_config_json_as_it_was(run_copy):
    truncate(newest(run_copy, "optimizer"))
    only_newest_checkpoint(run_copy)
    before = (run_copy / "config.json").read_text()
    assert main(["train", "--resume", str(run_copy), "--steps", "10"]) == 2
    assert (run_copy / "config.json").read_text() == before


def test_checkpoint_files_and_their_folder_are_fsynced(tmp_path, monkeypatch):
    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd))[1])
    model = torch.nn.Linear(2, 2)
    checkpoint.save(tmp_path, 1, model, torch.optim.SGD(model.parameters(), lr=0.1), {})
    # weights, optimizer state, the step's manifest and checkpoint.json: each file and the folder
    assert len(synced) == 8


def test_sigterm_finishes_the_step_saves_and_exits(tmp_path):
    """A scheduler's SIGTERM is handled like Ctrl-C: the step ends, a checkpoint is saved."""
    import time

    run = tmp_path / "run"
    with open(tmp_path / "out.txt", "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "zoft", "train", *TINY, "--peft", "full",
                                 "--steps", "100000", "--save-every", "100000", "--out", str(run)],
                                stdout=out, stderr=subprocess.STDOUT)
        metrics, deadline = run / "metrics.jsonl", time.monotonic() + 120
        while not (metrics.exists() and metrics.read_text().count("\n") >= 2) and time.monotonic() < deadline:
            time.sleep(0.2)  # wait until steps are being taken
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    rest = (tmp_path / "out.txt").read_text()
    assert proc.returncode == 130, rest
    manifest = json.loads((run / "checkpoint.json").read_text())
    assert manifest["step"] >= 2 and "SIGTERM: finishing this step" in rest and "checkpoint saved at step" in rest


def test_max_length_beyond_the_models_positions_is_capped_not_a_crash(tmp_path, capsys):
    """The model's position count bounds --max-length, whatever the tokenizer's model_max_length
    says (converted tokenizers leave it at ~1e30)."""
    from zoft.train.session import Session

    session = Session.build(TrainConfig(**{**TINY_CFG, "max_length": 5000}), train=False)
    session.tokenizer.model_max_length = int(1e30)
    assert session.cfg.max_length == 512  # tiny-llama's positions
    assert session.objective.loss_sum(session.batch(session.splits.train[:2])).isfinite()
    assert "more than the model's 512 positions" in capsys.readouterr().err
