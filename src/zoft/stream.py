"""A frozen base streamed from disk one decoder block at a time (``--stream-base``).

For LoRA, prefix and prompt tuning only the small trainable tensors must stay in memory. With
``--stream-base`` the model is built as a skeleton whose decoder-block weights are not in
memory (torch's meta device); the embeddings, positions, final norm and head are read once and
stay resident; each decoder block's weights are read from the checkpoint's safetensors files
just before the block runs and dropped right after, with the next block read by a background
thread while the current one computes. Peak memory is then the resident tensors, two blocks,
the trainable tensors and one forward's activations, whatever the number of blocks.

Reads go through plain file reads into fresh tensors (no memory map), so the pages of the
checkpoint sit in the kernel's page cache, which the kernel reclaims, and not in the process.
Every forward reads every block: a ZO step of two forwards reads the blocks twice
(:attr:`BlockStreamer.bytes_read` counts them).

Only zeroth-order optimizers can use it: a backward pass would keep every block's weights
alive for the gradient (refused with a message), which is the memory the stream avoids. Full
fine-tuning is refused too (its trainable weights are the blocks).
"""

from __future__ import annotations

import json
import struct
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch import nn

_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "I64": torch.int64,
           "I32": torch.int32, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}


class Checkpoint:
    """The tensors of a folder of safetensors files, read by name with plain file reads."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        files = sorted(self.folder.glob("*.safetensors"))
        if not files:
            raise ValueError(f"--stream-base reads safetensors files; {self.folder} has none "
                             "(save the model with save_pretrained(..., safe_serialization=True))")
        self.where: dict[str, tuple[Path, torch.dtype, tuple[int, ...], int, int]] = {}
        for path in files:
            with open(path, "rb") as f:
                size = struct.unpack("<Q", f.read(8))[0]
                header = json.loads(f.read(size))
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                start, end = info["data_offsets"]
                self.where[name] = (path, _DTYPES[info["dtype"]], tuple(info["shape"]), 8 + size + start, end - start)

    def read(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        path, stored, shape, offset, nbytes = self.where[name]
        out = torch.empty(shape, dtype=stored)
        with open(path, "rb", buffering=0) as f:
            f.seek(offset)
            view = memoryview(out.view(torch.uint8).reshape(-1).numpy()) if nbytes else None
            if view is not None and f.readinto(view) != nbytes:
                raise ValueError(f"{path}: truncated tensor {name}")
        return out if dtype is None or not out.is_floating_point() else out.to(dtype)


def _slot(module: nn.Module, name: str, key: str, names: set[str], aliases: dict[str, str]) -> tuple[nn.Module, str, str]:
    """(owner module, attribute, checkpoint key) of parameter ``name`` of ``module``, stored as
    ``key`` or under the name it is tied to."""
    key = key if key in names else aliases.get(key, key)
    if key not in names:
        raise ValueError(f"--stream-base: the checkpoint has no tensor {key}")
    owner_name, _, attr = name.rpartition(".")
    return (module.get_submodule(owner_name) if owner_name else module), attr, key


def _slots(module: nn.Module, prefix: str, names: set[str], aliases: dict[str, str]) -> list[tuple[nn.Module, str, str]]:
    """:func:`_slot` of every parameter under ``module`` (checkpoint keys ``prefix + name``)."""
    return [_slot(module, name, f"{prefix}{name}", names, aliases)
            for name, _ in module.named_parameters(remove_duplicate=False)]


class BlockStreamer:
    """Reads each block's frozen weights before its forward and drops them after it."""

    def __init__(self, checkpoint: Checkpoint, blocks: list[tuple[nn.Module, list[tuple[nn.Module, str, str]]]],
                 dtype: torch.dtype, prefetch: bool = True) -> None:
        self.checkpoint, self.blocks, self.dtype = checkpoint, blocks, dtype
        self.bytes_read = 0
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(1) if prefetch else None
        self._ahead: dict[int, Future] = {}
        self._handles = []
        for i, (block, _) in enumerate(blocks):
            self._handles.append(block.register_forward_pre_hook(lambda mod, args, i=i: self._load(i)))
            self._handles.append(block.register_forward_hook(lambda mod, args, out, i=i: self._drop(i)))

    def _read(self, i: int) -> list[torch.Tensor]:
        tensors = [self.checkpoint.read(key, self.dtype) for _, _, key in self.blocks[i][1]]
        with self._lock:
            self.bytes_read += sum(t.numel() * t.element_size() for t in tensors)
        return tensors

    def _load(self, i: int) -> None:
        future = self._ahead.pop(i, None)
        tensors = future.result() if future is not None else self._read(i)
        for (owner, attr, _), tensor in zip(self.blocks[i][1], tensors):
            owner._parameters[attr] = nn.Parameter(tensor, requires_grad=False)
        if self._pool is not None and i + 1 < len(self.blocks) and i + 1 not in self._ahead:
            self._ahead[i + 1] = self._pool.submit(self._read, i + 1)

    def _drop(self, i: int) -> None:
        for owner, attr, _ in self.blocks[i][1]:
            old = owner._parameters[attr]
            owner._parameters[attr] = nn.Parameter(torch.empty(old.shape, dtype=old.dtype, device="meta"),
                                                   requires_grad=False)

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        if self._pool is not None:
            self._pool.shutdown(wait=True)


def decoder_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(dotted name, ModuleList) of the model's decoder blocks: the largest ModuleList."""
    lists = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) > 1]
    if not lists:
        raise ValueError(f"--stream-base: {type(model).__name__} has no list of decoder blocks")
    return max(lists, key=lambda x: sum(p.numel() for p in x[1].parameters()))


def load_streamed(folder: str | Path, dtype: torch.dtype, prefetch: bool = True) -> tuple[nn.Module, Any, BlockStreamer]:
    """A causal LM from ``folder`` (config.json, tokenizer, safetensors) with its decoder blocks
    streamed; returns (model, tokenizer, streamer)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ValueError(f"--stream-base needs a local model folder with config.json and safetensors files, "
                         f"got {str(folder)!r}")
    checkpoint = Checkpoint(folder)
    config = AutoConfig.from_pretrained(folder)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    names = set(checkpoint.where)
    tied = getattr(model, "_tied_weights_keys", None) or {}
    aliases = dict(tied) if isinstance(tied, dict) else {}
    block_name, blocks = decoder_blocks(model)
    streamed = {id(p) for p in blocks.parameters()}
    for name, param in list(model.named_parameters(remove_duplicate=False)):
        if id(param) in streamed or not param.is_meta:
            continue
        owner, attr, key = _slot(model, name, name, names, aliases)
        owner._parameters[attr] = nn.Parameter(checkpoint.read(key, dtype), requires_grad=param.requires_grad)
    if getattr(config, "tie_word_embeddings", False) and model.get_output_embeddings() is not None:
        model.get_output_embeddings().weight = model.get_input_embeddings().weight
    plan = [(block, _slots(block, f"{block_name}.{i}.", names, aliases)) for i, block in enumerate(blocks)]
    streamer = BlockStreamer(checkpoint, plan, dtype, prefetch)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return model.eval(), tokenizer, streamer


def materialize_adapters(model: nn.Module, seed: int) -> int:
    """Give the LoRA matrices that peft placed on the meta device (beside a streamed base
    weight) real fp32 storage and peft's initialisation (A Kaiming-uniform, B zero), drawn under
    ``seed`` in module order; returns how many layers were set up. (The draws differ from the
    in-memory path's, where module construction draws too; B = 0 either way, so both start at
    the base model.)"""
    from peft.tuners.lora import LoraLayer

    from zoft.models import seeded

    done = 0
    with seeded(seed):
        for module in model.modules():
            if isinstance(module, LoraLayer) and any(p.is_meta for p in module.lora_A.parameters()):
                for adapter in module.active_adapters:
                    for part in (module.lora_A[adapter], module.lora_B[adapter]):
                        part.to_empty(device="cpu")
                        part.float()
                    module.reset_lora_parameters(adapter, init_lora_weights=True)
                done += 1
    left = [n for n, p in model.named_parameters() if p.requires_grad and p.is_meta]
    if left:
        raise ValueError(f"--stream-base: trainable tensor {left[0]} has no storage")
    return done
