"""The package as users install it: a wheel built from this tree (not the editable install)
carries its package data and runs `zoft list` and a short tiny-model training run."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    pytest.importorskip("build", reason="the dev extras install `build`")
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(ROOT)],
                   check=True, capture_output=True, text=True)
    (found,) = out.glob("zoft-*.whl")
    return found


def test_the_wheel_carries_the_package_data(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("zoft/tasks/builtin/") and n.endswith(".tsv") for n in names)
    assert any(n.startswith("zoft/perturb/") and n.endswith(".c") for n in names)
    assert any(n.endswith("entry_points.txt") for n in names)


def test_the_installed_wheel_lists_and_trains(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-compile",
                    "--target", str(target), str(wheel)], check=True, capture_output=True, text=True)
    env = {**os.environ, "PYTHONPATH": str(target)}  # ahead of the editable install's path
    where = subprocess.run([sys.executable, "-c", "import zoft; print(zoft.__file__)"], env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).resolve().is_relative_to(target.resolve())  # the wheel's copy, not src/
    script = target / "bin" / "zoft"
    listed = subprocess.run([sys.executable, str(script), "list"], env=env, capture_output=True, text=True)
    assert listed.returncode == 0 and "zo-sgd" in listed.stdout and "sentiment-demo" in listed.stdout
    run = subprocess.run([sys.executable, str(script), "train", "--model", "tiny-llama", "--task", "sentiment-demo",
                          "--steps", "2", "--batch-size", "2", "--train-size", "8", "--dev-size", "4",
                          "--test-size", "4", "--out", str(tmp_path / "run")],
                         env=env, capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "run" / "summary.json").exists()
