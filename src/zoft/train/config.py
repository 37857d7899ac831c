"""TrainConfig: every setting of a run, from a YAML/TOML file and/or the command line."""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from zoft.core.checks import as_float, check_bool, check_choice, check_int, check_range, invalid

QUANTIZATIONS = ("int8", "int4")  # --quantize: the frozen base's linear layers (zoft.quantize)

ZO_ONLY = ("eps", "q", "estimator", "perturbation", "rng")
TRAINER_OPTIONS = ("orthogonalise_embeddings",)
"""opt_options keys that shape the param groups instead of going to make_optimizer."""
DEFAULT_BUCKET_POSITIONS = 64
"""A batch's rows run in length buckets of at least this many padded positions
(zoft.train.objective.length_buckets) when bucket_positions is unset: on SST-2-shaped batches
of SmolLM2-135M the forward is ~20% faster than one batch padded to its longest row
(bench/forward_speed.py); unset rather than 64 so that cell keys of earlier runs stay valid."""
DEFAULT_FULL_RNG = "counter"
"""The noise engine of ZO full fine-tuning when rng is unset: regenerating the noise of every
weight three times per step is where torch's serial CPU generator costs most (bench/step_overhead.py).
Other schemes perturb few entries and keep torch's generator (no compile step)."""


@dataclass
class TrainConfig:
    # model and data
    model: str = "smollm2-135m"
    dtype: str = "auto"  # auto | fp32 | bf16 | fp16 | amp-bf16 (zoft.train.precision)
    device: str = "auto"
    task: str = "sentiment-demo"
    data_dir: str | None = None
    train_file: str | None = None  # the user's own data (task "own"; zoft.tasks.own)
    dev_file: str | None = None
    test_file: str | None = None
    format: str | None = None  # classification | choice | generation | chat (None: inferred)
    template: str | None = None  # classification prompt with {text}
    verbalizer: str | None = None  # "0=terrible,1=great"
    train_size: int = 1000
    dev_size: int = 500
    test_size: int = 1000
    max_length: int = 256
    compile: bool | None = None  # torch.compile(dynamic=True) the decoder body (None: off)
    bucket_positions: int | None = None  # length buckets of >= N padded positions (None: 64; 0: off)
    max_new_tokens: int = 32
    # parameter-efficient scheme
    peft: str = "lora"
    peft_options: dict[str, Any] = field(default_factory=dict)
    # optimizer
    optimizer: str = "zo-sgd"
    lr: float = 1e-4
    eps: float | None = None
    q: int | None = None
    estimator: str | None = None
    perturbation: str | None = None
    rng: str | None = None  # ZO noise engine: torch | counter (zoft.perturb)
    momentum: float | None = None
    weight_decay: float = 0.0
    opt_options: dict[str, Any] = field(default_factory=dict)
    finetuner: str | None = None  # zo-finetuner's learned file (zoft learn-finetuner)
    # loop
    steps: int = 200
    lr_schedule: str = "constant"  # constant | linear | cosine (zoft.optim.schedule), over `steps`
    warmup_steps: int = 0
    forward_budget: int = 0  # stop once this many training forward passes are spent (0: no limit)
    batch_size: int = 16
    grad_accum: int = 1
    eval_every: int = 0
    eval_zero_shot: bool = False  # score dev and test before the first step (best-dev candidate)
    save_every: int = 100
    log_every: int = 1
    seed: int = 0
    objective: str = "loss"  # loss | accuracy | f1 | python:MODULE:FUNCTION (a metric: ZO only)
    out: str = "runs/latest"
    tensorboard: bool = False
    # scale: device placement and precision (None: the defaults described in the CLI help)
    device_map: str | None = None  # accelerate big-model placement, e.g. "auto" (forward-only ZO)
    master_weights: bool | None = None  # fp32 masters of bf16/fp16 trainable tensors (ZO only)
    quantize: str | None = None  # int8 | int4: the frozen base's linear layers (zoft.quantize; PEFT only)
    stream_base: bool | None = None  # read the frozen decoder blocks from disk per forward (zoft.stream; ZO + PEFT)
    offload_blocks: bool | None = None  # full FT with the blocks in CPU memory, one at a time on the device (zoft.offload)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> "TrainConfig":
        """Refuse every value a run cannot use, with one line naming it (numbers written as text,
        as YAML 1.1 reads ``1e-3``, become floats). Names (model, task, optimizer, ...) are
        checked by the registries that know them, when the run is built."""
        for key in ("lr", "weight_decay", "eps", "momentum"):
            setattr(self, key, as_float(key, getattr(self, key)))
        for key, low in (("train_size", 1), ("dev_size", 0), ("test_size", 0), ("max_length", 2),
                         ("max_new_tokens", 1), ("steps", 0), ("warmup_steps", 0), ("forward_budget", 0),
                         ("batch_size", 1), ("grad_accum", 1), ("eval_every", 0), ("save_every", 1),
                         ("log_every", 1), ("seed", 0)):
            check_int(key, getattr(self, key), low)
        for key, low in (("bucket_positions", 0), ("q", 1)):
            if getattr(self, key) is not None:
                check_int(key, getattr(self, key), low)
        check_range("lr", self.lr, 0.0)
        check_range("weight_decay", self.weight_decay, 0.0)
        if self.eps is not None:
            check_range("eps", self.eps, 0.0, low_open=True)
        if self.momentum is not None:
            check_range("momentum", self.momentum, 0.0)
        for key in ("eval_zero_shot", "tensorboard"):
            check_bool(key, getattr(self, key))
        for key in ("compile", "master_weights", "stream_base", "offload_blocks"):
            check_bool(key, getattr(self, key), optional=True)
        for key in ("model", "dtype", "device", "task", "peft", "optimizer", "lr_schedule", "out"):
            if not isinstance(getattr(self, key), str) or not getattr(self, key):
                raise invalid(key, getattr(self, key), "a non-empty string")
        if self.quantize is not None:
            check_choice("quantize", self.quantize, QUANTIZATIONS)
        if not isinstance(self.objective, str):
            raise invalid("objective", self.objective, "a string")
        from zoft.train.objective import metric_objective
        metric_objective(self.objective)  # names the problem with an unknown or unimportable one
        if (self.task == "own") != (self.train_file is not None):
            raise ValueError("--task own goes with --train-file FILE (your data), and --train-file with "
                             f"--task own or no --task (task {self.task!r}, train_file {self.train_file!r})")
        for key in ("data_dir", "train_file", "dev_file", "test_file", "format", "template", "verbalizer"):
            if getattr(self, key) is not None and not isinstance(getattr(self, key), str):
                raise invalid(key, getattr(self, key), "a string")
        for key in ("peft_options", "opt_options"):
            if not isinstance(getattr(self, key), dict):
                raise invalid(key, getattr(self, key), "a mapping of KEY: VALUE")
        return self

    def traits(self):
        """The optimizer's declared traits (zoft.optim.traits.Traits)."""
        from zoft.optim import optimizer_traits  # here, not at the top: this module does not import torch

        return optimizer_traits(self.optimizer)

    def scheme(self):
        """The PEFT scheme's config class, whose traits (default_eps, dense) decide defaults."""
        from zoft.peft import SCHEMES  # here, not at the top: this module does not import torch

        return SCHEMES.get(self.peft)

    def default_eps(self) -> float:
        """MeZO's perturbation size for the scheme, used when eps is unset."""
        return self.scheme().default_eps

    def backprop(self) -> bool:
        """Whether the optimizer differentiates the model (FO baselines, forward-grad)."""
        return not self.traits().zeroth_order

    def uses_master_weights(self) -> bool:
        """Explicit setting, else on for ZO PEFT with bf16/fp16 weights (cheap), off for full
        fine-tuning. ``dtype`` must be concrete (not ``auto``): zoft.train.precision resolves it."""
        backprop = self.backprop()
        if self.master_weights and backprop:
            raise ValueError(f"master_weights is for ZO optimizers; {self.optimizer} computes "
                             "gradients of the model's own tensors")
        if self.master_weights is None:
            if self.dtype == "auto":
                raise ValueError("dtype 'auto' is resolved before the run is built (zoft.train.session.resolve_precision)")
            return not backprop and not self.scheme().dense and self.dtype in ("bf16", "fp16")
        return bool(self.master_weights)

    def optimizer_hparams(self) -> dict[str, Any]:
        """Keyword arguments for zoft.make_optimizer (unset ones left to its defaults)."""
        hp = {"lr": self.lr, "weight_decay": self.weight_decay, "seed": self.seed}
        for key in (*ZO_ONLY, "momentum"):
            if getattr(self, key) is not None:
                hp[key] = getattr(self, key)
        traits = self.traits()
        if "eps" not in hp and traits.takes_eps:
            hp["eps"] = self.default_eps()
        if "rng" not in hp and self.scheme().dense and traits.takes_rng:
            hp["rng"] = DEFAULT_FULL_RNG
        if (self.finetuner is not None) != traits.needs_finetuner:
            raise ValueError("--finetuner FILE goes with an optimizer that reads one (zo-finetuner), and "
                             f"that optimizer needs it (optimizer {self.optimizer!r}, finetuner {self.finetuner!r})")
        if self.finetuner is not None:
            hp.update(finetuner=self.finetuner, base_model=self.model)
        return {**hp, **{k: v for k, v in self.opt_options.items() if k not in TRAINER_OPTIONS}}

    def orthogonalise_embeddings(self) -> bool:
        """opt_options' orthogonalise_embeddings: False puts the token embedding and output head
        of a Muon variant in a group of their own that takes the fallback rule (Muon practice);
        True (default) orthogonalises every trainable matrix, Evseev et al.'s rule. Setting it for
        another optimizer is an error."""
        if "orthogonalise_embeddings" not in self.opt_options:
            return True
        value = self.opt_options["orthogonalise_embeddings"]
        if not isinstance(value, bool):
            raise ValueError(f"invalid orthogonalise_embeddings {value!r}; must be true or false")
        from zoft.optim import muon_variants  # here, not at the top: this module does not import torch
        if self.optimizer not in (variants := muon_variants()):
            raise ValueError(f"orthogonalise_embeddings is an option of {' and '.join(variants)}, "
                             f"not of {self.optimizer}")
        return value

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{source}: unknown key(s) {unknown}; valid keys: {sorted(known)}")
        try:
            return cls(**values)
        except ValueError as err:
            raise ValueError(f"{source}: {err}" if source not in ("config", "command line") else str(err)) from None


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Keys of a YAML (.yaml/.yml), TOML (.toml) or JSON (.json) file, with dashes as underscores."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config file {path} does not exist")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            raise ValueError(f"config file {path}: unknown format {path.suffix!r}; use .yaml, .toml or .json")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"config file {path}: {err}") from None
    except Exception as err:  # yaml.YAMLError carries the line in its message
        if type(err).__module__.startswith("yaml"):
            raise ValueError(f"config file {path}: {err}") from None
        raise
    if not isinstance(data, dict):
        raise ValueError(f"config file {path}: expected a mapping of keys, got {type(data).__name__}")
    return {k.replace("-", "_"): v for k, v in data.items()}
