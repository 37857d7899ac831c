"""The benchmark harness: spec expansion, a tiny grid end to end, skip on rerun, report."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from zoft.bench import expand_spec, load_spec
from zoft.cli import main

SPEC = """
name: tiny
base: {model: tiny-llama, task: sentiment-demo, peft: lora, steps: 3, batch_size: 2,
       train_size: 8, dev_size: 4, test_size: 4, eval_every: 3, max_length: 48}
grid:
  optimizer: [zo-sgd, fo-sgd]
  lr: [1.0e-3, 1.0e-2]
  seed: [0, 1]
per_optimizer:
  fo-sgd: {lr: [1.0e-3]}
quick: {steps: 2, eval_every: 2}
"""


def test_spec_expands_to_the_grid_with_per_optimizer_overrides(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC)
    cells = expand_spec(load_spec(path))
    assert len(cells) == 2 * 2 + 1 * 2
    assert {(c.varied["optimizer"], c.varied["lr"]) for c in cells} == {
        ("zo-sgd", 1e-3), ("zo-sgd", 1e-2), ("fo-sgd", 1e-3)}
    assert len({c.key for c in cells}) == len(cells)
    assert [c.key for c in expand_spec(load_spec(path))] == [c.key for c in cells]  # stable hashes
    assert all(c.config["steps"] == 2 for c in expand_spec(load_spec(path), quick=True))


@pytest.mark.parametrize("text, match", [
    ("grid: {optimizr: [zo-sgd]}", "unknown key"),
    ("grids: {}", "unknown key"),
    ("grid: {optimizer: [nope]}\nbase: {model: tiny-llama}", None),
])
def test_bad_specs_are_rejected(tmp_path, text, match):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    if match:
        with pytest.raises(ValueError, match=match):
            expand_spec(load_spec(path))
    else:  # an unknown optimizer is caught when its cell runs: the grid reports it as failed
        assert len(expand_spec(load_spec(path))) == 1


def test_tiny_grid_end_to_end_then_skip_and_report(tmp_path):
    spec, out = tmp_path / "spec.yaml", tmp_path / "out"
    spec.write_text(SPEC)
    assert main(["bench", str(spec), "--out", str(out), "--quick"]) == 0
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == 6 and all(r["status"] == "finished" for r in rows)
    tables = (out / "tables.md").read_text()
    assert "zo-sgd" in tables and "fo-sgd" in tables and "(n=2)" in tables
    assert "## Peak memory in GiB" in tables
    chosen = tables.split("## Hyperparameters chosen on dev")[1].split("##")[0]
    zo_row = next(line for line in chosen.splitlines() if line.startswith("| zo-sgd |"))
    assert zo_row.count("lr=") == 1 and ("lr=0.001" in zo_row or "lr=0.01" in zo_row)
    assert "| fo-sgd | - |" in chosen  # one lr for fo-sgd: nothing chosen
    for png in ["loss_vs_step.png", "dev_vs_forward_passes.png", "memory.png"]:
        assert (out / png).stat().st_size > 1000
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("cells/*/summary.json")}
    assert main(["bench", str(spec), "--out", str(out), "--quick"]) == 0  # finished cells skipped
    assert stamps == {p: p.stat().st_mtime_ns for p in out.glob("cells/*/summary.json")}
    (out / "tables.md").unlink()
    assert main(["report", str(out)]) == 0 and (out / "tables.md").exists()
    zo = [r for r in rows if r["optimizer"] == "zo-sgd"]
    assert all(json.loads(r["config"])["steps"] == 2 for r in zo)


def test_zero_shot_cells_exclusions_quick_axes_and_pieces(tmp_path):
    from zoft.bench.grid import select

    path = tmp_path / "spec.yaml"
    path.write_text("""
zero_shot: true
base: {model: tiny-llama, peft: lora, steps: 3, lr: 3.0e-4}
grid: {task: [sst2, copa], optimizer: [zo-sgd, fo-adam], seed: [0, 1]}
exclude: [{optimizer: fo-adam, task: copa}]
quick: {task: [sst2], seed: [0], steps: 1}
""")
    cells = expand_spec(load_spec(path))
    zero = [c for c in cells if c.varied["optimizer"] == "zero-shot"]
    # one untrained cell per task and seed (a seed samples its own dev and test examples)
    assert [(c.varied["task"], c.config["seed"]) for c in zero] == [("sst2", 0), ("sst2", 1), ("copa", 0), ("copa", 1)]
    assert all(c.config["steps"] == 0 for c in zero)
    assert len(cells) == 4 + 2 * 2 + 1 * 2  # fo-adam x copa excluded
    assert not any(c.varied["optimizer"] == "fo-adam" and c.varied["task"] == "copa" for c in cells)
    quick = expand_spec(load_spec(path), quick=True)
    assert {(c.varied["optimizer"], c.varied["task"]) for c in quick} == {
        ("zero-shot", "sst2"), ("zo-sgd", "sst2"), ("fo-adam", "sst2")}
    assert all(c.config["steps"] == 1 for c in quick if c.varied["optimizer"] != "zero-shot")
    piece = select(cells, ["task=sst2", "seed=1"])
    assert {c.varied["optimizer"] for c in piece} == {"zero-shot", "zo-sgd", "fo-adam"} and len(piece) == 3
    assert [c.key for c in select(cells, ["optimizer=zero-shot"])] == [c.key for c in zero]
    # a zero-shot cell's config names the base optimizer, but it is not that optimizer's cell
    assert all(c.varied["optimizer"] == "zo-sgd" for c in select(cells, ["optimizer=zo-sgd"]))
    # YAML 1.1 reads 3e-4 (no dot) as a string: --only lr=3e-4 must still match lr 3.0e-4
    assert len(select(cells, ["lr=3e-4"])) == len(cells) == len(select(cells, ["lr=0.0003"]))
    assert select(cells, ["lr=1e-3"]) == []
    with pytest.raises(ValueError, match="unknown key"):
        select(cells, ["sed=1"])


def test_zero_shot_cell_scores_the_untrained_model(tmp_path):
    spec, out = tmp_path / "spec.yaml", tmp_path / "out"
    spec.write_text("""
zero_shot: true
base: {model: tiny-llama, task: sentiment-demo, peft: lora, steps: 2, batch_size: 2, train_size: 8,
       dev_size: 4, test_size: 4, eval_every: 2, max_length: 48}
grid: {optimizer: [zo-sgd]}
""")
    assert main(["bench", str(spec), "--out", str(out), "--only", "optimizer=zero-shot"]) == 0
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [(r["optimizer"], r["steps"], r["forward_passes"]) for r in rows] == [("zero-shot", "0", "0")]
    assert rows[0]["best_dev_metric"] != "" and rows[0]["test_metric"] != ""
    assert "zero-shot" in (out / "tables.md").read_text()


SPECS = sorted((Path(__file__).parents[1] / "bench" / "specs").glob("*.yaml"))


@pytest.mark.skipif(not os.environ.get("ZOFT_DATA_DIR"), reason="the specs read real tasks: ZOFT_DATA_DIR is not set")
@pytest.mark.parametrize("spec", SPECS, ids=[p.stem for p in SPECS])
def test_every_shipped_spec_runs_in_quick_mode(tmp_path, spec):
    """Each spec's --quick mode (tiny models, a few cells) runs end to end and reports."""
    cells = expand_spec(load_spec(spec), quick=True)
    assert 0 < len(cells) <= 6 and all(c.config["model"].startswith(("tiny-", "random-opt-125m")) for c in cells)
    assert main(["bench", str(spec), "--out", str(tmp_path), "--quick"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert len(rows) == len(cells) and all(r["status"] == "finished" for r in rows)


def test_cell_key_ignores_unset_options():
    """A new TrainConfig option left unset must not change the key of cells run before it."""
    from zoft.bench.grid import Cell
    config = {"model": "tiny-llama", "optimizer": "zo-sgd", "lr": 1e-3}
    assert Cell(config, {}).key == Cell({**config, "new_option": None}, {}).key
    assert Cell(config, {}).key != Cell({**config, "new_option": 1}, {}).key
    assert Cell(config, {}).key == Cell({**config, "objective": "loss"}, {}).key  # added later, at its default
    assert Cell(config, {}).key != Cell({**config, "objective": "accuracy"}, {}).key


def test_every_committed_cell_keeps_its_key():
    """Each cell stored under docs/results (loose or packed) is named by the key its own config
    hashes to now: a change to the key (or a new TrainConfig default) would make every stored
    cell run again."""
    from zoft.bench import store
    from zoft.bench.grid import Cell
    results = Path(__file__).resolve().parents[1] / "docs" / "results"
    checked = 0
    for out in sorted({p.parent.parent for p in results.glob("*/cells/*/cell.json")} |
                      {p.parent for p in results.glob("*/cells.zip")}):
        for key in store.keys(out):
            stored = store.read_json(out, key, "cell.json")
            assert Cell(stored["config"], stored["varied"]).key == key, f"{out.name}/{key}"
            checked += 1
    assert checked > 50


def _fake_cell(out: Path, key: str, optimizer: str, task: str, lr: float, seed: int, test: float, dev: float,
               losses: list[float], dev_loss: float | None = None, opt_options: dict | None = None) -> None:
    folder = out / "cells" / key
    folder.mkdir(parents=True)
    config = {"model": "m", "task": task, "peft": "lora", "optimizer": optimizer, "lr": lr, "seed": seed,
              "opt_options": opt_options or {}}
    (folder / "cell.json").write_text(json.dumps({"varied": {"optimizer": optimizer, "lr": lr, "seed": seed},
                                                  "config": config}))
    (folder / "summary.json").write_text(json.dumps({
        "status": "finished", "steps": len(losses), "forward_passes": 2 * len(losses), "wall_time_s": 1.0,
        "peak_memory_bytes": 2**30, "trainable_params": 10, "best_dev_metric": dev, "test_metric": test,
        "metric_name": "accuracy"}))
    rows = [{"step": i + 1, "loss": v} for i, v in enumerate(losses)]
    if dev_loss is not None:
        rows.append({"step": len(losses), "dev_accuracy": dev, "dev_loss": dev_loss})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_report_losses_tie_breaks_and_head_to_head(tmp_path):
    from zoft.bench.report import build_report

    out = tmp_path / "out"
    ten = lambda last: [1.0] * 9 + [last]  # final loss: the last 10% of 10 steps, i.e. the last step
    # sst2: zo-sgd's two lrs tie on dev accuracy; no dev loss: the lower final loss (lr 0.1) is chosen
    _fake_cell(out, "a", "zo-sgd", "sst2", 0.01, 0, test=0.50, dev=0.6, losses=ten(0.9))
    _fake_cell(out, "b", "zo-sgd", "sst2", 0.1, 0, test=0.55, dev=0.6, losses=ten(0.7))
    _fake_cell(out, "c", "zo-finetuner", "sst2", 0.1, 0, test=0.60, dev=0.7, losses=ten(0.8))
    # copa: a dev-accuracy tie goes to the lower dev loss (lr 0.01) although its final loss is higher
    _fake_cell(out, "d", "zo-sgd", "copa", 0.1, 0, test=0.70, dev=0.6, losses=ten(0.6), dev_loss=0.69)
    _fake_cell(out, "f", "zo-sgd", "copa", 0.01, 0, test=0.72, dev=0.6, losses=ten(0.65), dev_loss=0.68)
    _fake_cell(out, "e", "zo-finetuner", "copa", 0.1, 0, test=0.65, dev=0.6, losses=ten(0.5), dev_loss=0.66)
    rows = build_report(out)
    by_key = {r["key"]: r for r in rows}
    assert by_key["b"]["final_loss"] == pytest.approx(0.7) and by_key["b"]["dev_loss"] is None
    assert by_key["e"]["dev_loss"] == pytest.approx(0.66)
    tables = (out / "tables.md").read_text()
    assert "| zo-sgd | 0.720 +- 0.000 (n=1) | 0.550 +- 0.000 (n=1) |" in tables  # copa, sst2 columns
    assert "## Dev loss at the last evaluation" in tables and "## Final training loss" in tables
    h2h = tables[tables.index("## Against zo-sgd"):].splitlines()
    row = next(line for line in h2h if line.startswith("| zo-finetuner"))
    # test: sst2 +0.05 (win), copa -0.07 (loss); dev loss: copa only, -0.02 (win);
    # final loss: sst2 +0.1 (loss), copa 0.5 - 0.65 = -0.15 (win)
    assert row == ("| zo-finetuner | 2 | 1 / 0 / 1 | -0.0100 | 1 / 0 / 0 | -0.0200 | 1 / 0 / 1 | -0.0250 |")


def test_report_pairs_runs_with_the_zero_shot_cell_of_their_seed(tmp_path):
    from zoft.bench.report import build_report

    out = tmp_path / "out"
    # zero-shot differs by seed (each seed samples its own examples): 0.50 and 0.60, dev loss 0.9 / 1.0
    _fake_cell(out, "z0", "zero-shot", "sst2", 0.1, 0, test=0.50, dev=0.5, losses=[], dev_loss=0.9)
    _fake_cell(out, "z1", "zero-shot", "sst2", 0.1, 1, test=0.60, dev=0.5, losses=[], dev_loss=1.0)
    _fake_cell(out, "a0", "zo-sgd", "sst2", 0.1, 0, test=0.55, dev=0.6, losses=[0.8], dev_loss=0.8)
    _fake_cell(out, "a1", "zo-sgd", "sst2", 0.1, 1, test=0.61, dev=0.6, losses=[0.8], dev_loss=0.7)
    _fake_cell(out, "b0", "fo-sgd", "copa", 0.1, 0, test=0.70, dev=0.6, losses=[0.8])  # no zero-shot: no pair
    build_report(out)
    tables = (out / "tables.md").read_text()
    paired = tables[tables.index("## Against zero-shot"):].splitlines()
    assert paired[2] == "| optimizer | m / copa / lora | m / sst2 / lora |"
    # seed 0: +0.05 test, -0.1 dev loss; seed 1: +0.01, -0.3 -> means +0.03, -0.2 (unpaired means: -0.02 test)
    assert next(line for line in paired if line.startswith("| zo-sgd")) == "| zo-sgd |  | +0.030; -0.200 |"
    assert next(line for line in paired if line.startswith("| fo-sgd")) == "| fo-sgd |  |  |"
    assert not any(line.startswith("| zero-shot") for line in paired[:6])


def test_optimizer_options_name_their_own_rows(tmp_path):
    """Cells that differ only in opt_options (a spec's base) are separate methods, not lr candidates."""
    from zoft.bench.report import build_report

    out = tmp_path / "out"
    fallback = {"fallback_lr": 1e-6}
    # a spec with opt_options in its base gives its zero-shot cell those options too: still "zero-shot"
    _fake_cell(out, "z", "zero-shot", "sst2", 0.1, 0, test=0.50, dev=0.5, losses=[], dev_loss=0.9,
               opt_options=fallback)
    _fake_cell(out, "a", "zo-muon", "sst2", 0.1, 0, test=0.40, dev=0.6, losses=[5.0], dev_loss=4.0)
    _fake_cell(out, "b", "zo-muon", "sst2", 0.1, 0, test=0.52, dev=0.55, losses=[0.8], dev_loss=0.8,
               opt_options=fallback)
    rows = build_report(out)
    assert sorted(r["optimizer"] for r in rows) == ["zero-shot", "zo-muon", "zo-muon (fallback_lr=1e-06)"]
    paired = (out / "tables.md").read_text().split("## Against zero-shot")[1].splitlines()
    assert "| zo-muon (fallback_lr=1e-06) | +0.020; -0.100 |" in paired  # chosen on its own, not beaten by "a"
    assert "| zo-muon | -0.100; +3.100 |" in paired


def test_drop_weights_keeps_results_and_deletes_weight_files(tmp_path):
    """--drop-weights deletes finished cells' weights and optimizer state (a cell finished earlier and
    one run now), keeps what the report reads, and a rerun still skips the cells."""
    spec, out = tmp_path / "spec.yaml", tmp_path / "out"
    spec.write_text(SPEC)
    zo = ["--only", "optimizer=zo-sgd", "lr=0.001"]
    assert main(["bench", str(spec), "--out", str(out), "--quick", *zo, "seed=0"]) == 0
    (first,) = out.glob("cells/*/")
    weights = ["checkpoint.json", "best.safetensors", "weights-*.safetensors", "optimizer-*.pt"]
    assert all(list(first.glob(p)) for p in weights)  # kept by default
    assert main(["bench", str(spec), "--out", str(out), "--quick", *zo, "--drop-weights"]) == 0
    cells = list(out.glob("cells/*/"))
    assert len(cells) == 2
    for cell in cells:
        assert not any(list(cell.glob(p)) for p in weights), cell
        for kept in ["summary.json", "metrics.jsonl", "cell.json", "train_config.json"]:
            assert (cell / kept).exists(), kept
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("cells/*/summary.json")}
    assert main(["bench", str(spec), "--out", str(out), "--quick", *zo, "--drop-weights"]) == 0
    assert stamps == {p: p.stat().st_mtime_ns for p in out.glob("cells/*/summary.json")}  # not rerun
    assert len(list(csv.DictReader(open(out / "results.csv")))) == 2


def test_noise_passes_benchmark_runs_and_writes_every_variant(tmp_path):
    if shutil.which(os.environ.get("CC") or "cc") is None:
        pytest.skip("no C compiler on this machine")
    script = Path(__file__).resolve().parents[1] / "bench" / "noise_passes.py"
    subprocess.run([sys.executable, str(script), "--no-step", "--entries", "100000", "--repeats", "1",
                    "--out", str(tmp_path)], check=True, capture_output=True, text=True)
    report = json.loads((tmp_path / "noise_passes.json").read_text())
    assert set(report["passes"]) == {"add", "rademacher", "rademacher_fused", "gaussian", "gaussian_fused",
                                     "gaussian_short"}
    assert report["entries"] == 100000 and all(t["median_s"] > 0 for t in report["passes"].values())
    assert (tmp_path / "noise_passes.csv").exists() and (tmp_path / "noise_passes.png").exists()


def test_muon_fallback_diagnostic_moves_the_non_matrix_tensors(tmp_path):
    script = Path(__file__).resolve().parents[1] / "bench" / "muon_fallback.py"
    subprocess.run([sys.executable, str(script), "--model", "tiny-llama", "--task", "sentiment-demo",
                    "--steps", "3", "--lrs", "0", "1", "--out", str(tmp_path)],
                   check=True, capture_output=True, text=True)
    losses = json.loads((tmp_path / "muon_fallback.json").read_text())["losses"]
    assert set(losses) == {"0", "1"} and all(len(v) == 3 for v in losses.values())
    assert losses["0"][0] == losses["1"][0]  # same batch, same start
    assert losses["0"][2] != losses["1"][2]  # the 1-D tensors moved at lr 1
    assert (tmp_path / "muon_fallback.csv").exists() and (tmp_path / "muon_fallback.png").exists()


def test_plot_styles_stay_distinct_past_ten_labels():
    """Grids with more than matplotlib's 10 colours (SST-2 full: 12 rows) must not draw two labels alike."""
    from zoft.bench.plots import _styles

    labels = [f"opt-{i}" for i in range(12)] + ["opt-3"]  # a label seen in several panels
    styles = _styles(labels)
    assert len(styles) == 12
    assert len({(s["color"], s["linestyle"]) for s in styles.values()}) == 12


BENCH = Path(__file__).resolve().parents[1] / "bench"
DATA = os.environ.get("ZOFT_DATA_DIR")
needs_data = pytest.mark.skipif(not DATA or not (Path(DATA) / "SST-2").exists(),
                                reason="needs the official SST-2 files ($ZOFT_DATA_DIR)")


def bench_module(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pilot_sweeps_lrs_reads_them_back_and_names_a_range(tmp_path):
    cmd = [sys.executable, str(BENCH / "pilot.py"), "--model", "tiny-llama", "--task", "sentiment-demo",
           "--lrs", "1e-3", "1e-1", "--steps", "4", "--eval-every", "2", "--train-size", "16", "--dev-size", "8",
           "--batch-size", "4", "--max-length", "48", "--out", str(tmp_path)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    result = json.loads((tmp_path / "pilot.json").read_text())
    assert [r["lr"] for r in result["lrs"]] == [1e-3, 1e-1]
    for r in result["lrs"]:
        assert [c["step"] for c in r["curve"]] == [0, 2, 4] and r["status"] == "finished"
        assert r["drop_last"] == pytest.approx(r["dev_loss_start"] - r["dev_loss_last"])
    assert result["lrs"][0]["dev_loss_start"] == result["lrs"][1]["dev_loss_start"]  # same seed, same start
    assert set(result["reading"]) >= {"best_lr", "range", "moved", "note"}
    stamp = (tmp_path / "lr_0.001" / "summary.json").stat().st_mtime_ns
    subprocess.run(cmd, check=True, capture_output=True, text=True)  # finished lrs are read back, not rerun
    assert (tmp_path / "lr_0.001" / "summary.json").stat().st_mtime_ns == stamp
    assert (tmp_path / "pilot.csv").exists() and (tmp_path / "pilot.png").exists()


def test_pilot_reading_flags_no_movement_and_divergence():
    pilot = bench_module("pilot")
    row = lambda lr, drop, diverged=False: {"lr": lr, "drop_last": drop, "diverged": diverged}
    flat = pilot.reading([row(1e-4, 0.001), row(1e-3, 0.004)], noise=0.01)
    assert not flat["moved"] and flat["range"] == [] and "too short" in flat["note"]
    moved = pilot.reading([row(1e-4, 0.02), row(1e-3, 0.1), row(3e-3, 0.06), row(1e-2, 0.3, diverged=True)], 0.01)
    assert moved["best_lr"] == 1e-3 and moved["range"] == [1e-3, 3e-3] and moved["moved"]
    assert pilot.reading([row(1e-2, 0.3, diverged=True)], 0.01)["best_lr"] is None


def test_stacked_batch_is_the_batch_twice():
    from zoft.models import load_model
    from zoft.tasks import Example
    from zoft.train.objective import Objective, collate

    stacked = bench_module("forward_speed").stacked
    model, tok = load_model("tiny-llama", dtype="fp32", device="cpu")
    batch = collate(tok, [Example("Fun. It was", (" terrible", " great"), 1),
                          Example("A dull film. It was", (" terrible", " great"), 0)])
    objective = Objective(model)
    preds, loss_sum = objective.predict(batch)
    preds2, loss_sum2 = objective.predict(stacked(batch))
    assert preds2 == preds + preds
    assert loss_sum2 == pytest.approx(2 * loss_sum, rel=1e-5)


@needs_data
def test_bf16_estimate_agrees_with_the_exact_derivative_in_fp32(tmp_path):
    subprocess.run([sys.executable, str(BENCH / "bf16_estimate.py"), "--model", "tiny-llama", "--data-dir", DATA,
                    "--directions", "3", "--batch-size", "4", "--out", str(tmp_path)],
                   check=True, capture_output=True, text=True)
    result = json.loads((tmp_path / "bf16_estimate.json").read_text())
    cell = lambda scheme, precision, eps: next(r for r in result["rows"] if r["scheme"] == scheme
                                               and r["precision"] == precision and r["eps"] == eps)
    assert cell("full", "fp32", 1e-3)["relative_error"] < 0.05  # a central difference of a smooth loss
    assert cell("lora", "fp32", 3e-3)["relative_error"] < 0.05
    assert cell("full", "bf16", 1e-4)["relative_error"] > cell("full", "fp32", 1e-4)["relative_error"]
    assert set(result["breaks"]) == {f"{s}/{p}" for s in ("lora", "full") for p in ("fp32", "bf16", "amp-bf16")}
    assert 1e-3 in result["breaks"]["full/fp32"]["good_eps"]
    assert (tmp_path / "bf16_estimate.png").exists()


@needs_data
def test_forward_speed_measures_every_mode(tmp_path):
    subprocess.run([sys.executable, str(BENCH / "forward_speed.py"), "--model", "tiny-llama", "--data-dir", DATA,
                    "--rounds", "1", "--gemm", "128", "--no-compile", "--no-probes", "--out", str(tmp_path)],
                   check=True, capture_output=True, text=True)
    result = json.loads((tmp_path / "forward_speed.json").read_text())
    assert {(r["workload"], r["mode"]) for r in result["forward"]} == {
        (w, m) for w in ("sst2", "multirc") for m in ("fp32", "bf16", "amp-bf16", "stacked", "bf16+buckets")}
    assert all(r["tokens_per_s"] > 0 and 0 < r["fraction_of_gemm_peak"] for r in result["forward"])
    assert {(r["scheme"], r["mode"]) for r in result["steps"]} == {
        (s, m) for s in ("lora", "full") for m in ("fp32", "bf16", "amp-bf16")} | {
        ("lora", "bf16+buckets"), ("full", "amp-bf16+buckets")}


def test_reach_table_counts_forward_passes_to_each_dev_level(tmp_path):
    from zoft.bench.report import reach_table

    rows = [{"step": 0, "dev_accuracy": 0.5, "dev_loss": 0.9}]
    for step in range(1, 7):
        rows.append({"step": step, "loss": 0.5, "forward_passes": 2 * step, "wall_time_s": 1.5 * step})
        if step % 2 == 0:
            rows.append({"step": step, "dev_accuracy": {2: 0.65, 4: 0.75, 6: 0.72}[step], "dev_loss": 0.8})
    for key, metrics in (("a", rows), ("b", rows[:1])):
        (tmp_path / "cells" / key).mkdir(parents=True)
        (tmp_path / "cells" / key / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics))
    column = ("m", "t", "lora")
    chosen = {(*column, "zo-sgd"): [{"key": "a"}], (*column, "zo-adam"): [{"key": "b"}]}
    lines = reach_table(tmp_path, chosen, [column], ["zo-sgd", "zo-adam"])
    text = "\n".join(lines)
    assert "reach dev metric 0.70" in text and "reach dev metric 0.80" in text
    assert "| zo-sgd | 8 (6 s) |" in text  # first reached at step 4: 8 passes, 6 s
    assert text.count("not reached") == 3  # zo-adam twice, zo-sgd at 0.80


def test_packed_cells_report_the_same_tables(tmp_path):
    """zoft report --pack moves finished cells into cells.zip; the report reads it unchanged."""
    import shutil

    from zoft.bench.store import ARCHIVE

    src = Path(__file__).resolve().parents[1] / "docs" / "results" / "accuracy_full"
    out = tmp_path / "grid"
    shutil.copytree(src, out)
    before = main_report(out)
    (out / "cells" / "unfinished").mkdir(parents=True)  # a loose cell without a summary stays loose
    (out / "cells" / "unfinished" / "train.log").write_text("running\n")
    assert main(["report", str(out), "--pack"]) == 0
    assert (out / ARCHIVE).exists() and sorted(p.name for p in (out / "cells").iterdir()) == ["unfinished"]
    assert main_report(out) == before


def test_packing_keeps_a_weighted_cell_a_run_folder(tmp_path):
    """A finished cell that keeps its weights stays a run folder (zoft eval / export) after --pack."""
    import shutil

    from zoft.bench.store import ARCHIVE, RUN_FILES

    src = Path(__file__).resolve().parents[1] / "docs" / "results" / "converge_sst2"
    out = tmp_path / "grid"
    shutil.copytree(src, out)
    (out / ARCHIVE).unlink()  # as the cell was before its first pack: every file loose
    packed = [c for c in (out / "cells").iterdir() if not (c / "metrics.jsonl").exists()]
    for other in set((out / "cells").iterdir()) - set(packed):  # cells committed loose (unfinished, newer)
        shutil.rmtree(other)
    (cell,) = packed
    for name in ("metrics.jsonl", "train.log", "stderr.log"):
        (cell / name).write_text("{}\n" if name.endswith("jsonl") else "log\n")
    before = sorted(p.name for p in cell.iterdir())
    assert main(["report", str(out), "--pack"]) == 0
    kept = sorted(p.name for p in cell.iterdir())
    assert set(RUN_FILES) <= set(kept) and "metrics.jsonl" not in kept and "best.safetensors" in kept
    assert set(before) - set(kept) == {"metrics.jsonl", "train.log", "stderr.log"}


def main_report(out):
    assert main(["report", str(out)]) == 0
    return (out / "tables.md").read_text(), (out / "results.csv").read_text()


def test_jobs_run_cells_at_once_with_their_share_of_the_threads(tmp_path, monkeypatch):
    """--jobs 2: two cells are in flight together (a 2-party barrier would time out otherwise),
    each told cores // 2 threads; the records keep the cells' order; --jobs 0 is refused."""
    import threading

    from zoft.bench import runner

    (tmp_path / "spec.yaml").write_text(SPEC)
    cells = expand_spec(load_spec(tmp_path / "spec.yaml"), quick=True)[:4]
    barrier, seen = threading.Barrier(2, timeout=30), []

    def fake(out, cell, log, drop_weights, threads, jobs, piece_passes):
        barrier.wait()
        seen.append((threads, jobs))
        return {"status": "finished"}

    monkeypatch.setattr(runner, "run_cell", fake)
    records = runner.run_grid(cells, tmp_path / "out", jobs=2)
    assert [r["key"] for r in records] == [c.key for c in cells]
    assert seen == [(max(1, (os.cpu_count() or 1) // 2), 2)] * 4
    with pytest.raises(ValueError, match="--jobs must be at least 1"):
        runner.run_grid(cells, tmp_path / "out", jobs=0)


def test_jobs_grid_gives_the_sequential_grid_results(tmp_path):
    """The same quick grid with --jobs 2 and --jobs 1: every cell finished, the same final losses
    (threads change only the order of float reductions), cell.json records jobs and threads."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    finals = {}
    for jobs in (1, 2):
        out = tmp_path / f"jobs{jobs}"
        assert main(["bench", str(spec), "--out", str(out), "--quick", "--jobs", str(jobs)]) == 0
        rows = list(csv.DictReader(open(out / "results.csv")))
        assert len(rows) == 6 and all(r["status"] == "finished" for r in rows)
        finals[jobs] = {r["key"]: float(r["final_loss"]) for r in rows}
        meta = [json.loads(p.read_text()) for p in out.glob("cells/*/cell.json")]
        assert all(("jobs" in m) == (jobs > 1) for m in meta)
    assert finals[1].keys() == finals[2].keys()
    assert all(finals[1][k] == pytest.approx(finals[2][k], rel=1e-4, abs=1e-6) for k in finals[1])


def test_parallel_cells_times_both_arms_and_writes_its_files(tmp_path):
    subprocess.run([sys.executable, str(BENCH / "parallel_cells.py"), "--model", "tiny-llama", "--task",
                    "sentiment-demo", "--peft", "lora", "--steps", "2", "--rounds", "1", "--cores", "2",
                    "--out", str(tmp_path)], check=True, capture_output=True, text=True)
    result = json.loads((tmp_path / "parallel_cells.json").read_text())
    assert [(r["arm"], r["processes"], r["threads"]) for r in result["rounds"]] == [("alone", 1, 2), ("side_by_side", 2, 1)]
    assert result["throughput_ratio"] > 0 and all(r["steps_per_s"] > 0 for r in result["rounds"])
    assert (tmp_path / "parallel_cells.png").stat().st_size > 1000 and (tmp_path / "parallel_cells.csv").exists()
    assert not (tmp_path / "runs").exists()  # the timed runs are removed


def test_memory_creep_records_every_arms_peak_per_step(tmp_path):
    subprocess.run([sys.executable, str(BENCH / "memory_creep.py"), "--model", "tiny-llama", "--task",
                    "sentiment-demo", "--peft", "lora", "--steps", "3", "--out", str(tmp_path)],
                   check=True, capture_output=True, text=True)
    result = json.loads((tmp_path / "memory_creep.json").read_text())
    assert set(result["arms"]) == {"buckets", "no_buckets", "buckets_onednn_cache_0"}
    for arm in result["arms"].values():
        steps = [s for s, _ in arm["peak_gib_by_step"]]
        peaks = [g for _, g in arm["peak_gib_by_step"]]
        assert steps == [1, 2, 3] and peaks == sorted(peaks) and peaks[0] > 0  # a high-water mark
        assert arm["s_per_step"] > 0
    assert result["arms"]["buckets"]["s_per_step_vs_buckets"] == 1.0
    rows = (tmp_path / "memory_creep.csv").read_text().splitlines()
    assert rows[0] == "arm,step,peak_gib" and len(rows) == 1 + 3 * 3
    assert (tmp_path / "memory_creep.png").stat().st_size > 1000 and not (tmp_path / "runs").exists()


def test_piece_passes_advance_every_cell_a_piece_at_a_time(tmp_path, capsys):
    """--piece-passes N pauses each unfinished cell after N more forward passes; a rerun
    continues it to the results of an uninterrupted grid, and the report says where it stands."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    only = ["--only", "optimizer=zo-sgd", "seed=0", "lr=1e-2"]  # 3 steps of 2 passes
    assert main(["bench", str(spec), "--out", str(tmp_path / "whole"), *only]) == 0
    out = tmp_path / "pieces"
    for piece, (status, steps) in enumerate([("unfinished", 2), ("finished", 3)]):
        assert main(["bench", str(spec), "--out", str(out), *only, "--piece-passes", "4"]) == 0
        [row] = list(csv.DictReader(open(out / "results.csv")))
        assert (row["status"], int(row["steps"]), int(row["forward_passes"])) == (status, steps, 2 * steps)
    assert "1 of 1 cells finished" in capsys.readouterr().out
    [whole] = list(csv.DictReader(open(tmp_path / "whole" / "results.csv")))
    assert (row["final_loss"], row["test_metric"]) == (whole["final_loss"], whole["test_metric"])
    assert main(["bench", str(spec), "--out", str(out), "--piece-passes", "0"]) == 2
    assert "--piece-passes must be at least 1, got 0" in capsys.readouterr().err
