"""Mixed precision and device maps: fp32 master weights keep bf16 weights from drifting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from zoft import make_optimizer
from zoft.models import load_model
from zoft.peft import apply_peft
from zoft.train.config import TrainConfig
from zoft.train.loop import train
from zoft.train.objective import Objective, collate
from zoft.train.precision import MasterWeights
from zoft.train.session import parameter_groups
from zoft.tasks import Example

TINY = dict(model="tiny-llama", task="sentiment-demo", train_size=32, dev_size=8, test_size=8,
            batch_size=4, max_length=64, log_every=1)
EXAMPLES = [Example("The movie was fun. It was", (" terrible", " great"), 1),
            Example("A dull, long film. It was", (" terrible", " great"), 0)]


def zero_lr_steps(masters: bool, steps: int = 5) -> tuple[dict, dict]:
    """Weights of a bf16 tiny model before and after ``steps`` ZO steps at lr 0."""
    model, tok = load_model("tiny-llama", dtype="bf16", device="cpu")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    groups = parameter_groups(model, 0.0)
    keep = MasterWeights(model) if masters else None
    if keep:
        groups = keep.swap_into(groups)
    opt = make_optimizer("zo-sgd", groups, lr=0.0, eps=1e-2, rng="torch")
    objective = Objective(model)
    batch = collate(tok, EXAMPLES)
    for _ in range(steps):
        opt.step(lambda: objective.loss(batch))
    if keep:
        keep.sync()
    return before, {n: p.detach().clone() for n, p in model.named_parameters()}


def test_masters_make_perturb_and_restore_exact_in_bf16():
    before, after = zero_lr_steps(masters=True)
    for n in before:
        moved = before[n] != after[n]
        # every nonzero weight comes back bit for bit; an exact zero (the padding row) keeps the
        # fp32 restore's residue, ~1e-9, which bf16 can represent near zero
        assert not (moved & (before[n] != 0)).any(), n
        assert (after[n].float() - before[n].float()).abs().max() < 1e-7, n


def test_without_masters_bf16_weights_drift():
    before, after = zero_lr_steps(masters=False)
    drift = max((after[n].float() - before[n].float()).abs().max().item() for n in before)
    assert drift > 1e-4  # bf16 ulps; bench/precision_drift.py measures it against steps


def test_masters_accumulate_updates_smaller_than_a_bf16_ulp():
    model, _ = load_model("tiny-llama", dtype="bf16", device="cpu")
    p = next(q for q in model.parameters() if q.dim() == 2)
    keep = MasterWeights(model)
    start = p.detach().clone()
    master = keep.masters[next(n for n, q in model.named_parameters() if q is p)]
    ulp = start.float().abs().max().item() * 2 ** -8
    with torch.no_grad():
        for _ in range(50):  # each step 1/10 of an ulp of the largest entry
            master.add_(ulp / 10)
            keep.sync()
    moved = (p.float() - start.float()).max().item()
    assert moved >= 2 * ulp  # bf16 in-place adds of ulp/10 would round away every one
    keep.close()


def test_master_weights_config():
    assert TrainConfig(**TINY, dtype="bf16", peft="prompt").uses_master_weights()
    assert not TrainConfig(**TINY, dtype="bf16", peft="full").uses_master_weights()
    assert not TrainConfig(**TINY, dtype="fp32", peft="prompt").uses_master_weights()
    assert TrainConfig(**TINY, dtype="bf16", peft="full", master_weights=True).uses_master_weights()
    with pytest.raises(ValueError, match="master_weights is for ZO optimizers"):
        TrainConfig(**TINY, optimizer="fo-adam", master_weights=True).uses_master_weights()


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    manifest = json.loads((run_dir / "checkpoint.json").read_text())
    return load_file(str(run_dir / manifest["weights"]))


def test_bf16_full_run_with_masters_checkpoints_fp32_and_resumes_exactly(tmp_path):
    common = dict(TINY, dtype="bf16", peft="full", master_weights=True, lr=1e-3, rng="torch")
    straight = train(TrainConfig(**common, steps=4, out=str(tmp_path / "a")))
    assert straight["status"] == "finished"
    w = final_weights(tmp_path / "a")
    assert all(t.dtype == torch.float32 for t in w.values())  # the masters, not their bf16 rounding
    train(TrainConfig(**common, steps=2, out=str(tmp_path / "b")))
    resumed = train(TrainConfig(**common, steps=4, out=str(tmp_path / "b")), resume=True)
    assert resumed["status"] == "finished"
    v = final_weights(tmp_path / "b")
    assert all(torch.equal(w[k], v[k]) for k in w)


@pytest.mark.parametrize("device_map", ["cpu", "auto"])
def test_training_on_a_device_mapped_model(tmp_path, device_map):
    summary = train(TrainConfig(**TINY, steps=2, device_map=device_map, out=str(tmp_path / "run")))
    assert summary["status"] == "finished"


def test_device_map_offload_of_trainable_tensors_is_refused():
    from zoft.train.session import check_resident

    model, _ = load_model("tiny-llama", device="cpu")
    model = apply_peft(model, "full")
    check_resident(model)  # all on cpu: fine
    with torch.device("meta"):
        ghost = torch.nn.Linear(2, 2)
    model.ghost = ghost
    with pytest.raises(ValueError, match="offloaded"):
        check_resident(model)


# --- dtype auto: bf16 compute where the hardware has it (zoft.train.precision) ---------------

from zoft.train import precision as prec  # noqa: E402
from zoft.train.session import Session, resolve_precision  # noqa: E402


def test_resolve_dtype_rules(monkeypatch):
    monkeypatch.setattr(prec, "native_bf16", lambda device: "the CPU has AVX512-BF16")
    assert prec.resolve_dtype("auto", "cpu", backprop=False, full=False)[0] == "bf16"
    assert prec.resolve_dtype("auto", "cpu", backprop=False, full=True)[0] == "amp-bf16"
    assert prec.resolve_dtype("auto", "cpu", backprop=True, full=False)[0] == "fp32"
    for concrete in ("fp32", "bf16", "fp16", "amp-bf16"):
        assert prec.resolve_dtype(concrete, "cpu", backprop=False, full=False) == (concrete, "as configured")
    monkeypatch.setattr(prec, "native_bf16", lambda device: None)
    dtype, why = prec.resolve_dtype("auto", "cpu", backprop=False, full=False)
    assert dtype == "fp32" and "no native bf16" in why
    with pytest.raises(ValueError, match="invalid dtype 'bf32'; allowed: auto, fp32"):
        prec.resolve_dtype("bf32", "cpu", backprop=False, full=False)


def test_native_bf16_reads_the_cpu_flags(monkeypatch):
    monkeypatch.setattr(prec, "_cpu_flags", lambda: {"avx512f", "avx512_bf16", "amx_bf16"})
    assert prec.native_bf16("cpu") == "the CPU has AMX-BF16 and AVX512-BF16"
    monkeypatch.setattr(prec, "_cpu_flags", lambda: {"avx2", "avx512f"})
    assert prec.native_bf16("cpu") is None
    assert prec.native_bf16("mps") is None


def test_invalid_dtype_fails_before_the_model_loads(tmp_path):
    with pytest.raises(ValueError, match="invalid dtype 'half'"):
        Session.build(TrainConfig(**TINY, dtype="half"))


@pytest.mark.parametrize("native,peft,expected", [(True, "lora", "bf16"), (True, "full", "amp-bf16"),
                                                  (False, "lora", "fp32")])
def test_auto_run_records_the_concrete_dtype(tmp_path, monkeypatch, native, peft, expected):
    monkeypatch.setattr(prec, "native_bf16", lambda device: "test hardware" if native else None)
    summary = train(TrainConfig(**TINY, peft=peft, steps=2, out=str(tmp_path / "run")))
    assert summary["status"] == "finished"
    assert summary["dtype"] == expected
    assert summary["compute_dtype"] == ("fp32" if expected == "fp32" else "bf16")
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["dtype"] == expected  # a resume on another machine keeps it
    log = (tmp_path / "run" / "train.log").read_text()
    assert f"precision: {expected} (auto:" in log


def test_backprop_baselines_stay_fp32_under_auto(monkeypatch):
    monkeypatch.setattr(prec, "native_bf16", lambda device: "test hardware")
    assert resolve_precision(TrainConfig(**TINY, optimizer="fo-adam")).dtype == "fp32"
    assert resolve_precision(TrainConfig(**TINY, optimizer="zo-sgd")).dtype == "bf16"


def test_amp_bf16_computes_in_bf16_over_fp32_weights():
    model, tok = load_model("tiny-llama", dtype="fp32", device="cpu")
    batch = collate(tok, EXAMPLES)
    seen = []
    handle = model.get_decoder().layers[0].mlp.down_proj.register_forward_hook(
        lambda m, a, out: seen.append(out.dtype))
    with torch.no_grad():
        exact = float(Objective(model).loss(batch))
        amp = float(Objective(model, autocast=torch.bfloat16).loss(batch))
    handle.remove()
    assert seen == [torch.float32, torch.bfloat16]
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert amp != exact and abs(amp - exact) < 0.05 * abs(exact)  # bf16 rounding, not another function


def test_amp_bf16_zo_steps_move_fp32_weights_only_by_fp32_rounding():
    """Under amp-bf16 the weights stay fp32: ZO steps at lr 0 return them to within fp32
    rounding of the perturb/restore arithmetic (bf16 weights would drift by bf16 ulps)."""
    model, tok = load_model("tiny-llama", dtype="fp32", device="cpu")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = make_optimizer("zo-sgd", parameter_groups(model, 0.0), lr=0.0, eps=1e-3, rng="torch")
    objective, batch = Objective(model, autocast=torch.bfloat16), collate(tok, EXAMPLES)
    for _ in range(3):
        opt.step(lambda: objective.loss(batch))
    for n, p in model.named_parameters():
        assert p.dtype == torch.float32
        torch.testing.assert_close(p, before[n], rtol=1e-6, atol=1e-8, msg=n)


@pytest.mark.parametrize("dtype,peft", [("bf16", "lora"), ("amp-bf16", "full")])
def test_bf16_runs_rerun_and_resume_bit_for_bit(tmp_path, dtype, peft):
    common = dict(TINY, dtype=dtype, peft=peft, lr=1e-3, rng="torch")
    train(TrainConfig(**common, steps=4, out=str(tmp_path / "a")))
    train(TrainConfig(**common, steps=4, out=str(tmp_path / "b")))
    train(TrainConfig(**common, steps=2, out=str(tmp_path / "c")))
    train(TrainConfig(**common, steps=4, out=str(tmp_path / "c")), resume=True)
    a, b, c = (final_weights(tmp_path / x) for x in "abc")
    assert all(torch.equal(a[k], b[k]) and torch.equal(a[k], c[k]) for k in a)
