"""The FineTuner: one PertNN per parameter block of one base model, and its file format.

Block layout: the ordered list of blocks, each a name, the trainable tensors it covers and
their shapes. ``group_by="tensor"`` makes one block per tensor (the paper's choice);
``"module"`` groups the tensors of one module (``...q_proj.weight`` and ``...q_proj.bias``)
to cut the number of networks for big models; any callable name -> block name works too.

File (``FineTuner.save``; ``torch.save`` of a dict, read back with ``weights_only=True``):

    format        "zoft-finetuner"
    version       1
    base_model    the base model identifier (hub id or path) it was trained for
    layout        [{"name": str, "tensors": [str], "shapes": [[int]]}, ...]
    config        FineTunerConfig fields (hidden, var_floor, seed)
    training      the meta-training record (hyperparameters, meta-loss history), may be {}
    state_dict    the PertNNs' weights: nets.<b>.hidden.weight, ... (float32)
"""

from __future__ import annotations

import dataclasses
import math
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Sequence

import torch
from torch import nn

from zoft.core import derive_seed
from zoft.learned.pertnn import PertNN, normalised_scales, stacked_forward
from zoft.perturb import noise_dtype

FORMAT, VERSION = "zoft-finetuner", 1
GroupBy = Literal["tensor", "module"] | Callable[[str], str]


@dataclass(frozen=True)
class Block:
    """One parameter block: its name, the tensors (names) it covers and their shapes."""

    name: str
    tensors: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @property
    def numel(self) -> int:
        return sum(math.prod(s) for s in self.shapes)

    def describe(self) -> str:
        return f"{self.name!r} (tensors {list(self.tensors)}, shapes {[list(s) for s in self.shapes]})"


@dataclass(frozen=True)
class FineTunerConfig:
    """Hyperparameters of the networks (stored in the file).

    hidden: PertNN width (the paper's 64). var_floor: added to var(theta_b) before the log
    of the ``log_var`` feature, so that constant tensors (norm weights at 1, zero biases)
    give a finite input; 1e-8 is a spread (std) of 1e-4, below that of trained weights.
    seed: the PertNNs' initialisation (network b from derive_seed(seed, b)).
    """

    hidden: int = 64
    var_floor: float = 1e-8
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.hidden, bool) or not isinstance(self.hidden, int) or self.hidden < 1:
            raise ValueError(f"invalid hidden {self.hidden!r}; must be an integer >= 1")
        if not isinstance(self.var_floor, (int, float)) or not self.var_floor > 0:
            raise ValueError(f"invalid var_floor {self.var_floor!r}; must be a number > 0")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"invalid seed {self.seed!r}; must be an integer")


def block_layout(named_params: Iterable[tuple[str, torch.Tensor]], group_by: GroupBy = "tensor") -> list[Block]:
    """Blocks of the parameters that require grad, in order of first appearance.

    ``group_by``: "tensor" (one block per tensor), "module" (the name without its last
    component: a module's weight and bias share a block) or a callable name -> block name.
    """
    if group_by == "tensor":
        key: Callable[[str], str] = lambda name: name
    elif group_by == "module":
        key = lambda name: name.rpartition(".")[0]  # "" for the root module's own tensors
    elif callable(group_by):
        key = group_by
    else:
        raise ValueError(f"invalid group_by {group_by!r}; allowed: 'tensor', 'module' or a callable")
    groups: dict[str, list[tuple[str, tuple[int, ...]]]] = {}
    for name, p in named_params:
        if p.requires_grad:
            groups.setdefault(key(name), []).append((name, tuple(p.shape)))
    if not groups:
        raise ValueError("no trainable parameters (requires_grad=True) to build blocks from")
    return [Block(b, tuple(n for n, _ in ts), tuple(s for _, s in ts)) for b, ts in groups.items()]


def first_difference(mine: Sequence[Block], other: Sequence[Block]) -> str | None:
    """None when the layouts are equal, else a sentence naming the first differing block."""
    for b, (x, y) in enumerate(zip(mine, other)):
        if x != y:
            return f"block {b} is {x.describe()} in the FineTuner but {y.describe()} in the model"
    if len(mine) != len(other):
        longer, extra = ("FineTuner", mine) if len(mine) > len(other) else ("model", other)
        return (f"the FineTuner has {len(mine)} blocks and the model {len(other)}; the first "
                f"extra block, in the {longer}, is {extra[min(len(mine), len(other))].describe()}")
    return None


class FineTuner(nn.Module):
    """One PertNN per block of a base model's trainable parameters.

    ``scales(tensors, losses, prev_scales)`` maps the current parameters and the previous
    step's (l+, l-) and normalised scales to this step's normalised scales c * sigma_b
    (differentiable w.r.t. the networks; wrap in torch.no_grad when optimising).
    """

    def __init__(self, layout: Sequence[Block], base_model: str,
                 config: FineTunerConfig | None = None, training_record: dict[str, Any] | None = None) -> None:
        super().__init__()
        if not layout:
            raise ValueError("a FineTuner needs at least one block")
        if not isinstance(base_model, str) or not base_model:
            raise ValueError(f"invalid base_model {base_model!r}; must be a non-empty string")
        self.layout = list(layout)
        self.base_model = base_model
        self.config = config or FineTunerConfig()
        self.training_record = dict(training_record or {})  # how it was meta-trained (saved with it)
        gen = torch.Generator()
        nets = []
        for b in range(len(self.layout)):
            gen.manual_seed(derive_seed(self.config.seed, b))
            nets.append(PertNN(self.config.hidden, gen))
        self.nets = nn.ModuleList(nets)
        self.tensor_names = [n for blk in self.layout for n in blk.tensors]
        self.tensor_shapes = [s for blk in self.layout for s in blk.shapes]
        self.tensor_block = [b for b, blk in enumerate(self.layout) for _ in blk.tensors]
        if len(set(self.tensor_names)) != len(self.tensor_names):
            raise ValueError("a tensor appears in two blocks of the layout")
        for name, values, dtype in (("sizes", [blk.numel for blk in self.layout], torch.float64),
                                    ("tensor_sizes", [math.prod(s) for s in self.tensor_shapes], torch.float64),
                                    ("tensor_index", self.tensor_block, torch.long)):
            self.register_buffer(name, torch.tensor(values, dtype=dtype), persistent=False)

    # -- the maths ---------------------------------------------------------------------
    @torch.no_grad()
    def statistics(self, tensors: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-block (mean, population variance), each (B,) float64 on the FineTuner's device.

        ``tensors`` in layout order (``tensor_names``). Per tensor two passes, m = mean(t)
        then v = ||t - m||^2 / n (no cancellation, unlike ||t||^2 / n - m^2, and several
        times faster than torch.var_mean on CPU), with one temporary of that tensor's size, float32 for
        fp16/bf16 (as zo-sgd's noise). Blocks of several tensors pool them exactly:
        var = sum_t n_t (v_t + (m_t - m)^2) / n.
        """
        means, norms = [], []
        for t in tensors:
            x = t.detach().to(noise_dtype(t.dtype))
            m = x.mean()
            centred = x.sub_(m) if x.data_ptr() != t.data_ptr() else x - m  # sub_ on our own copy
            means.append(m.to(self.sizes.device))
            norms.append(torch.linalg.vector_norm(centred).to(self.sizes.device))
            del x, centred
        n_t, index = self.tensor_sizes, self.tensor_index
        m_t = torch.stack(means).double()
        v_t = torch.stack(norms).double() ** 2 / n_t
        zeros = torch.zeros_like(self.sizes)
        mean = zeros.index_add(0, index, n_t * m_t) / self.sizes
        spread = n_t * (v_t + (m_t - mean[index]) ** 2)
        return mean, zeros.index_add(0, index, spread) / self.sizes

    def features(self, tensors: Sequence[torch.Tensor], losses: tuple[float, float],
                 prev_scales: torch.Tensor) -> torch.Tensor:
        """(B, 5) float32 inputs of the PertNNs, columns as in :data:`FEATURES`."""
        mean, var = self.statistics(tensors)
        lp, lm = (torch.full_like(mean, float(v)) for v in losses)
        prev = prev_scales.to(device=mean.device, dtype=torch.float64)
        cols = [mean, torch.log(var + self.config.var_floor), lp, lm, prev]
        return torch.stack(cols, dim=1).to(torch.float32)

    def sigmas(self, features: torch.Tensor) -> torch.Tensor:
        """(B, 5) -> (B,) raw sigma_b = PertNN_b(features[b])."""
        return stacked_forward(self.nets, features)

    def scales(self, tensors: Sequence[torch.Tensor], losses: tuple[float, float],
               prev_scales: torch.Tensor) -> torch.Tensor:
        """(B,) float64 normalised scales c * sigma_b for the next step."""
        return normalised_scales(self.sigmas(self.features(tensors, losses, prev_scales)), self.sizes)

    # -- layout checks -------------------------------------------------------------------
    def check_base_model(self, base_model: str | None) -> None:
        if base_model is not None and base_model != self.base_model:
            raise ValueError(f"the FineTuner was trained for base model {self.base_model!r}, not {base_model!r}")

    def check_layout(self, layout: Sequence[Block]) -> None:
        diff = first_difference(self.layout, layout)
        if diff is not None:
            raise ValueError(f"block layout mismatch: {diff}")

    def match(self, names: Sequence[str] | None, shapes: Sequence[tuple[int, ...]]) -> list[int]:
        """For each layout tensor, the index of the same tensor among an optimizer's tensors.

        With ``names`` the tensors are matched by name (any order); without, they must come
        in layout order. Shapes are checked either way; a mismatch raises a ValueError naming
        the first block concerned.
        """
        shapes = [tuple(s) for s in shapes]
        if names is None:
            if shapes == self.tensor_shapes:
                return list(range(len(shapes)))
            pairs = zip(self.tensor_shapes, shapes)
            k = next((k for k, (a, b) in enumerate(pairs) if a != b), min(len(shapes), len(self.tensor_shapes)))
            want = (f"tensor {self.tensor_names[k]!r} of block {self.layout[self.tensor_block[k]].name!r}, shape "
                    f"{list(self.tensor_shapes[k])}" if k < len(self.tensor_names) else "absent")
            got = f"shape {list(shapes[k])}" if k < len(shapes) else "nothing"
            raise ValueError(f"block layout mismatch: parameter {k} should be {want}; got {got} (unnamed "
                             "parameters are matched in layout order; pass (name, tensor) pairs to match "
                             "by name)")
        where = {n: j for j, n in enumerate(names)}
        order = []
        for k, name in enumerate(self.tensor_names):
            blk = self.layout[self.tensor_block[k]]
            if name not in where:
                raise ValueError(f"block layout mismatch: tensor {name!r} of block {blk.describe()} "
                                 "is not among the optimizer's parameters")
            if shapes[where[name]] != self.tensor_shapes[k]:
                raise ValueError(f"block layout mismatch: tensor {name!r} of block {blk.describe()} "
                                 f"has shape {list(shapes[where[name]])} in the model")
            order.append(where[name])
        extra = sorted(set(names) - set(self.tensor_names), key=names.index)
        if extra:
            raise ValueError(f"block layout mismatch: parameter {extra[0]!r} is in no block of the FineTuner")
        return order

    # -- file --------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write the FineTuner file (format in the module docstring)."""
        torch.save({
            "format": FORMAT, "version": VERSION, "base_model": self.base_model,
            "layout": [{"name": b.name, "tensors": list(b.tensors), "shapes": [list(s) for s in b.shapes]}
                       for b in self.layout],
            "config": dataclasses.asdict(self.config),
            "training": self.training_record,
            "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()},
        }, str(path))

    @classmethod
    def load(cls, path: str | Path, base_model: str | None = None,
             layout: Sequence[Block] | None = None) -> "FineTuner":
        """Read a FineTuner file; with ``base_model`` / ``layout`` also check they match.

        Raises ValueError for a file that is not a FineTuner file, a newer version, or a
        base model / layout that differs (naming the first differing block).
        """
        try:
            data = torch.load(str(path), map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError, AttributeError) as exc:
            raise ValueError(f"{path} is not a FineTuner file (torch.load failed: {exc})") from None
        ft = cls._from_dict(data, str(path))
        ft.check_base_model(base_model)
        if layout is not None:
            ft.check_layout(layout)
        return ft

    @classmethod
    def _from_dict(cls, data: Any, source: str) -> "FineTuner":
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"{source} is not a FineTuner file (no format: {FORMAT!r} entry)")
        if data.get("version") != VERSION:
            raise ValueError(f"{source}: FineTuner file version {data.get('version')!r}; "
                             f"this zoft reads {VERSION}")
        missing = [k for k in ("base_model", "layout", "config", "state_dict") if k not in data]
        if missing:
            raise ValueError(f"{source}: malformed FineTuner file, missing {missing}")
        try:
            layout = [Block(b["name"], tuple(b["tensors"]), tuple(tuple(int(d) for d in s) for s in b["shapes"]))
                      for b in data["layout"]]
            config = FineTunerConfig(**data["config"])
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{source}: malformed FineTuner file, bad layout or config ({exc})") from None
        ft = cls(layout, data["base_model"], config, data.get("training") or {})
        try:
            ft.load_state_dict(data["state_dict"])
        except (RuntimeError, TypeError, AttributeError) as exc:
            raise ValueError(f"{source}: malformed FineTuner file, weights do not fit the layout "
                             f"({exc})") from None
        return ft
