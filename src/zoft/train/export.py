"""``zoft export RUN_DIR --out DIR``: a trained run as a folder that transformers (and peft) load
without zoft.

- LoRA: merged into the base by peft's ``merge_and_unload`` -> a plain transformers model folder
  (``AutoModelForCausalLM.from_pretrained(DIR)``); ``--adapter-only`` writes the peft adapter
  instead (``PeftModel.from_pretrained(base, DIR)``).
- prefix / prompt: a peft adapter (virtual tokens cannot be merged into weights), with the base
  model's id or folder in its adapter_config.json.
- full: the fine-tuned model folder.
The tokenizer is saved beside it in every case. The weights are the run's best dev weights
(``best.safetensors``), else its newest checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

from zoft.train import checkpoint
from zoft.train.precision import WEIGHTS
from zoft.train.run_files import read_run_config


def run_weights(run_dir: Path) -> Path:
    """The weights a finished or interrupted run is judged by: best dev, else the newest checkpoint."""
    best = run_dir / checkpoint.BEST
    if best.exists():
        return best
    if not checkpoint.has_checkpoint(run_dir):
        raise FileNotFoundError(f"{run_dir} has no weights yet (no {checkpoint.BEST}, no checkpoint)")
    return run_dir / checkpoint.read_manifest(run_dir / checkpoint.MANIFEST)["weights"]


def export_run(run_dir: str | Path, out: str | Path, adapter_only: bool = False) -> dict:
    """Write the run's model to ``out``; returns what was written (also ``out/zoft-export.json``)."""
    from zoft.models import load_model
    from zoft.peft import apply_peft

    run_dir, out = Path(run_dir), Path(out)
    cfg = read_run_config(run_dir)
    if adapter_only and cfg.peft == "full":
        raise ValueError("--adapter-only needs a PEFT run (lora, prefix, prompt); this run fine-tuned every weight")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; choose another --out")
    weights = run_weights(run_dir)
    model, tokenizer = load_model(cfg.model, dtype=WEIGHTS.get(cfg.dtype, "fp32"), device="cpu")
    model = apply_peft(model, cfg.peft, **cfg.peft_options)
    checkpoint.load_weights(weights, model)
    if cfg.peft == "lora" and not adapter_only:
        model, kind = model.merge_and_unload(), "merged model (LoRA folded into the base weights)"
    elif cfg.peft == "full":
        kind = "fine-tuned model"
    else:
        kind = f"peft {cfg.peft} adapter (load with peft.PeftModel.from_pretrained(base, DIR))"
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    record = {"run": str(run_dir), "weights": str(weights), "peft": cfg.peft, "model": cfg.model,
              "written": kind, "dtype": cfg.dtype}
    (out / "zoft-export.json").write_text(json.dumps(record, indent=2) + "\n")
    return record
