"""Everything a run needs, built from a TrainConfig: model, data, optimizer, objective."""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from tqdm import tqdm

from zoft.models import base_model, is_masked_lm, load_model, resolve_device
from zoft.optim import OPTIMIZERS, make_optimizer
from zoft.optim.traits import BACKPROP
from zoft.peft import apply_peft, count_parameters, position_offset
from zoft.tasks import Example, Task, get_task, load_splits
from zoft.train.config import DEFAULT_BUCKET_POSITIONS, TrainConfig
from zoft.train import checkpoint
from zoft.train.objective import Objective, collate, greedy_answers
from zoft.train.precision import WEIGHTS, MasterWeights, check_dtype, resolve_dtype


def parameter_groups(model: torch.nn.Module, weight_decay: float, named: bool = False) -> list[dict[str, Any]]:
    """Trainable parameters; with weight decay, biases and norm weights (ndim < 2) get none.
    ``named``: (name, tensor) pairs (torch.optim's named parameters), for optimizers that
    match tensors by name (zo-finetuner)."""
    params = [(n, p) if named else p for n, p in model.named_parameters() if p.requires_grad]
    if not weight_decay:
        return [{"params": params}]
    ndim = (lambda x: x[1].ndim) if named else (lambda x: x.ndim)
    return [{"params": [p for p in params if ndim(p) >= 2]},
            {"params": [p for p in params if ndim(p) < 2], "weight_decay": 0.0}]


def embeddings_apart(model: torch.nn.Module, groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``groups`` with the token embedding and output head (one tensor when tied) moved into a
    group of their own, with ``orthogonalise: False``: the Muon variants' fallback rule."""
    modules = [getattr(model, f"get_{kind}_embeddings", lambda: None)() for kind in ("input", "output")]
    ids = {id(m.weight) for m in modules if m is not None and isinstance(getattr(m, "weight", None), torch.Tensor)}
    out, moved = [], False
    for group in groups:  # plain tensors: only zo-finetuner's groups hold (name, tensor) pairs
        apart = [p for p in group["params"] if id(p) in ids]
        kept = [p for p in group["params"] if id(p) not in ids]
        out += [{**group, "params": kept}] if kept else []
        out += [{**group, "params": apart, "orthogonalise": False}] if apart else []
        moved = moved or bool(apart)
    if not moved:
        raise ValueError("orthogonalise_embeddings: false, but the token embedding and output head "
                         "are not trainable here (a PEFT scheme freezes them); drop the option")
    return out


def own_task(cfg: TrainConfig):
    """The task over the user's files (zoft.tasks.own)."""
    from zoft.tasks.own import OwnTask, hub_task

    if cfg.task.startswith("hf:"):
        return hub_task(cfg.task, cfg.format, cfg.template, cfg.verbalizer)
    return OwnTask(cfg.train_file, cfg.dev_file, cfg.test_file, cfg.format, cfg.template, cfg.verbalizer)


def cap_max_length(cfg: TrainConfig, model: torch.nn.Module, log=lambda m: None) -> TrainConfig:
    """``cfg`` with max_length at most the positions the model has (less a prompt's virtual
    tokens); the model's config, not the tokenizer's model_max_length (which converted and
    some hub tokenizers leave at ~1e30), is what a longer sequence would break."""
    base = base_model(model)
    positions = getattr(base.config, "max_position_embeddings", None)
    room = positions - position_offset(model) if isinstance(positions, int) else None
    if room is None or cfg.max_length <= room:
        return cfg
    log(f"note: --max-length {cfg.max_length} is more than the model's {positions} positions; using {room}")
    return dataclasses.replace(cfg, max_length=room)


def resolve_precision(cfg: TrainConfig, log=lambda m: None) -> TrainConfig:
    """``cfg`` with a concrete dtype (``auto`` resolved for this machine and optimizer, and
    logged); train() resolves before config.json is written, so a resumed run keeps it."""
    if check_dtype(cfg.dtype) != "auto":
        return cfg
    device = "cuda" if cfg.device_map is not None and torch.cuda.is_available() else resolve_device(cfg.device)
    dtype, why = resolve_dtype(cfg.dtype, device, cfg.backprop(), cfg.scheme().dense)
    log(f"precision: {dtype} ({why}; --dtype fp32 turns it off)")
    return dataclasses.replace(cfg, dtype=dtype)


def compile_decoder(model: torch.nn.Module) -> None:
    """torch.compile the transformer body in place (the LM head and zoft's scored-position
    hook on it stay eager, so the graph does not change with the batch's scored positions).
    Parameters are graph inputs, so in-place perturbations and updates are seen."""
    base = base_model(model)
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else None
    if not isinstance(decoder, torch.nn.Module):
        raise ValueError(f"compile: {type(base).__name__} has no decoder body to compile (get_decoder)")
    decoder.compile(dynamic=True)


def streamed_model(cfg: TrainConfig, train: bool, log):
    """(model, tokenizer, streamer) for --stream-base, after refusing what cannot stream."""
    from zoft.models import DTYPES, _finish_tokenizer
    from zoft.stream import load_streamed

    refusals = [(cfg.scheme().dense, "--peft full trains the blocks that would be streamed"),
                (train and cfg.backprop(), f"{cfg.optimizer} back-propagates, which keeps every block's weights "
                                           "for the backward"),
                (cfg.quantize, "--quantize and --stream-base are two ways to shrink the base; choose one"),
                (cfg.device_map, "--device-map places the model with accelerate; --stream-base streams it itself"),
                (cfg.compile, "--compile is not supported with a streamed base")]
    refuse("--stream-base", refusals)
    if resolve_device(cfg.device) != "cpu":
        raise ValueError("--stream-base streams blocks into CPU memory; use --device cpu")
    model, tokenizer, streamer = load_streamed(cfg.model, DTYPES[WEIGHTS[cfg.dtype]])
    _finish_tokenizer(tokenizer, model)
    log(f"stream-base: {len(streamer.blocks)} decoder blocks read from {cfg.model} per forward")
    return model, tokenizer, streamer


def refuse(flag: str, refusals: list[tuple[Any, str]]) -> None:
    """Raise a one-line ValueError ``flag: why`` for the first (refused, why) that holds."""
    why = next((message for refused, message in refusals if refused), None)
    if why:
        raise ValueError(f"{flag}: {why}")


def check_offload(cfg: TrainConfig) -> None:
    """Refuse what --offload-blocks cannot combine with, before the model loads."""
    refusals = [(not cfg.scheme().dense, f"it offloads the trainable blocks of --peft full; with --peft {cfg.peft} "
                 "the frozen base can be streamed from disk with --stream-base instead"),
                (cfg.stream_base, "--stream-base streams a frozen base; choose one"),
                (cfg.quantize, "--quantize stores a frozen base; full fine-tuning has none"),
                (cfg.device_map, "--device-map places the model with accelerate; --offload-blocks places it itself"),
                (cfg.compile, "--compile is not supported with offloaded blocks"),
                (cfg.grad_accum > 1, "it runs one forward per perturbation: raise --batch-size instead of --grad-accum"),
                (cfg.uses_master_weights(), "fp32 master weights are not offloaded; use --dtype fp32 or amp-bf16")]
    refuse("--offload-blocks", refusals)


def check_resident(model: torch.nn.Module) -> None:
    """Refuse trainable tensors that a device map offloaded (meta placeholders): accelerate
    streams those in per forward, so an in-place perturbation or update would be lost."""
    ghosts = [n for n, p in model.named_parameters() if p.requires_grad and p.device.type == "meta"]
    if ghosts:
        raise ValueError(f"the device map offloaded {len(ghosts)} trainable tensor(s) to cpu/disk "
                         f"(first: {ghosts[0]}); training needs them resident on a device: give "
                         "the devices more memory (max_memory) or train a PEFT scheme")


@dataclass
class Session:
    cfg: TrainConfig
    model: torch.nn.Module
    tokenizer: Any
    task: Task
    splits: Any
    optimizer: torch.optim.Optimizer | None  # None: an evaluation-only session
    objective: Objective
    device: torch.device
    masters: MasterWeights | None = None
    offload: Any = None  # zoft.offload.BlockOffload under --offload-blocks

    @classmethod
    def build(cls, cfg: TrainConfig, log=lambda m: print(m, file=sys.stderr), train: bool = True) -> "Session":
        """Everything a run needs; ``train=False`` builds no optimizer (evaluation only)."""
        OPTIMIZERS.get(cfg.optimizer)  # unknown names fail before the model loads
        cfg = resolve_precision(cfg, log)
        task = own_task(cfg) if cfg.task == "own" or cfg.task.startswith("hf:") else get_task(cfg.task)
        splits = load_splits(task, cfg.data_dir, cfg.train_size, cfg.dev_size, cfg.test_size, cfg.seed)
        for note in splits.notes:
            log(f"note: {note}")
        master_weights = train and cfg.uses_master_weights()  # invalid combinations fail before loading
        if cfg.quantize and cfg.scheme().dense:
            raise ValueError(f"--quantize {cfg.quantize} stores the frozen base quantized, but --peft {cfg.peft} "
                             "trains every weight; use lora, prefix or prompt")
        orthogonalise_embeddings = cfg.orthogonalise_embeddings()
        offload = train and bool(cfg.offload_blocks)
        if offload:
            check_offload(cfg)
        streamer = None
        if cfg.stream_base:
            model, tokenizer, streamer = streamed_model(cfg, train, log)
        else:
            model, tokenizer = load_model(cfg.model, dtype=WEIGHTS[cfg.dtype], device="cpu" if offload else cfg.device,
                                          device_map=cfg.device_map)
        if getattr(task, "needs_tokenizer", False):  # chat data: rendered with the tokenizer's template
            task.use_tokenizer(tokenizer)
            splits = load_splits(task, cfg.data_dir, cfg.train_size, cfg.dev_size, cfg.test_size, cfg.seed)
        model = apply_peft(model, cfg.peft, **cfg.peft_options)
        if streamer is not None:
            from zoft.stream import materialize_adapters

            materialize_adapters(model, seed=cfg.peft_options.get("seed", 0))
        if cfg.quantize:
            from zoft.models import gguf_file
            from zoft.quantize import quantize_frozen, quantized_bytes

            n, kept = quantize_frozen(model, cfg.quantize, gguf_file=gguf_file(cfg.model))
            from_file = f", {kept} of them the GGUF file's own Q4_1 blocks" if kept else ""
            log(f"quantize: {n} frozen linear layers stored in {cfg.quantize}{from_file} "
                f"({quantized_bytes(model) / 2**20:.1f} MiB)")
        cfg = cap_max_length(cfg, model, log)
        check_resident(model)
        if cfg.compile:
            compile_decoder(model)
            log("compile: the decoder runs under torch.compile(dynamic=True); the first forwards compile")
        model.eval()  # deterministic forwards (no dropout): both evaluations of a ZO step see one f
        generation = task.kind == "generation"
        if generation and is_masked_lm(model):
            raise ValueError(f"{cfg.model} is a masked language model: it scores classification and multiple "
                             f"choice candidates, it cannot generate ({task.name} is a generation task)")
        device = torch.device(resolve_device(cfg.device)) if offload else next(model.parameters()).device
        autocast = torch.bfloat16 if cfg.dtype == "amp-bf16" else None
        buckets = DEFAULT_BUCKET_POSITIONS if cfg.bucket_positions is None else cfg.bucket_positions
        if offload and buckets:  # a block runs once per perturbation and step: one forward per batch
            log("offload-blocks: length buckets off (each block runs once per perturbation and step)")
            buckets = 0
        if cfg.objective != "loss" and train and cfg.backprop():
            raise ValueError(f"--objective {cfg.objective} is not differentiable; {cfg.optimizer} needs "
                             "gradients (use a zeroth-order optimizer)")
        objective = Objective(model, generation=generation, offset=position_offset(model), autocast=autocast,
                              bucket_positions=buckets, target=cfg.objective if train else "loss")
        if not train:
            return cls(cfg, model, tokenizer, task, splits, None, objective, device)
        hp, traits = cfg.optimizer_hparams(), cfg.traits()
        if traits.needs_module:
            hp["module"] = model
        if traits.eager_attention:  # torch's fused CPU attention kernels have no jvp
            model.set_attn_implementation("eager")
        groups = parameter_groups(model, cfg.weight_decay, named=traits.named_params)
        if not orthogonalise_embeddings:
            groups = embeddings_apart(model, groups)
        masters = None
        if master_weights:
            masters = MasterWeights(model)
            groups = masters.swap_into(groups)
            if len(masters):
                log(f"master weights: fp32 copies of {len(masters)} low-precision trainable tensors")
        optimizer = make_optimizer(cfg.optimizer, groups, **hp)
        offloader = None
        if offload:
            from zoft.offload import BlockOffload

            offloader = BlockOffload(model, optimizer, device)
            blocks = sum(u.offloaded for u in offloader.units)
            log(f"offload-blocks: {blocks} decoder blocks in CPU memory, copied to {device} one at a time")
        return cls(cfg, model, tokenizer, task, splits, optimizer, objective, device, masters, offloader)

    @property
    def closure_driven(self) -> bool:
        """True for optimizers that evaluate the closure themselves (ZO and forward-grad);
        False for the backprop baselines, whose gradients the loop accumulates."""
        return getattr(type(self.optimizer), "traits", BACKPROP).closure_driven

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The trainable tensors to checkpoint: fp32 masters where there are masters."""
        self.sync()
        state = checkpoint.trainable_state(self.model)
        return {**state, **self.masters.state()} if self.masters else state

    def sync(self) -> None:
        """Offloaded blocks take their pending updates, so the CPU copies (and the optimizer
        state beside them) are current: before checkpoints and evaluations."""
        if self.offload is not None:
            self.offload.flush()

    def batch(self, examples: Sequence[Example]):
        mask = self.tokenizer.mask_token_id if is_masked_lm(self.model) else None
        return collate(self.tokenizer, examples, self.cfg.max_length, generation=self.task.kind == "generation",
                       mask_token_id=mask).to(self.device)

    def parameter_counts(self) -> tuple[int, int]:
        return count_parameters(self.model)

    @torch.no_grad()
    def evaluate(self, examples: Sequence[Example]) -> dict[str, float]:
        if not examples:
            return {}
        self.sync()
        if self.task.kind == "generation":
            with self.objective.compute():
                preds = greedy_answers(self.model, self.tokenizer, [e.prompt for e in examples],
                                       self.cfg.max_new_tokens, self.cfg.max_length)
            return self.task.score(examples, preds)
        preds, loss_sum, step = [], 0.0, self.cfg.batch_size
        for i in tqdm(range(0, len(examples), step), desc="evaluate", unit="batch", leave=False):
            batch_preds, batch_loss = self.objective.predict(self.batch(examples[i: i + step]))
            preds += batch_preds
            loss_sum += batch_loss
        # the metric first (the key dev selection reads), then the loss on the same examples
        return {**self.task.score(examples, preds), "loss": loss_sum / len(examples)}
