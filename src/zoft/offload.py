"""Block offloading for full fine-tuning (ZO2's design; Wang et al., COLM 2025): ``--offload-blocks``.

The trainable decoder blocks live in CPU memory (pinned when the compute device is a GPU);
the embeddings, positions, final norm and head stay on the compute device. One ZO step runs
the two perturbed forwards, f(x + eps u) and f(x - eps u), **block by block together**: each
block is copied to the device once per step, and while it is there

  1. the update of the previous step is applied to it (its restore fused with the update, as
     the in-memory step does: the block was left at x - eps u, so this is one replay of u),
  2. it is displaced by +eps u and runs the + forward's hidden states,
  3. it is displaced by -2 eps u and runs the - forward's hidden states,
  4. it is copied back to CPU memory, still at x - eps u: the restore is left pending.

After the last block the two losses give g = (f+ - f-) / (2 eps), and every block's restore and
update become the pending operation applied at its next upload (or by :meth:`flush`, before
an evaluation or a checkpoint). The next block's copy to the device is issued while the
current one computes (a side stream on a GPU, a worker thread here), so the device holds two
blocks, the resident tensors and one forward's activations, whatever the number of blocks.

Every tensor sees the same sequence of floating-point operations as in the in-memory step
(+eps u, -2 eps u, restore + update, with the same seeded u), so on CPU the offloaded run is
bitwise equal to the ordinary one; ``tests/test_offload.py`` checks it for ZO-SGD, momentum and
Adam. The two forwards run in two threads that take turns module by module (a lockstep): each
thread calls the unchanged closure, so the task's loss, its scored positions and the metering
are the ordinary ones. A tensor used by two modules (a head tied to the embeddings) keeps a
copy of its +eps value for the step.

Supported: the ZO optimizers on the shell's own step with the central estimator, q = 1 and a
seeded perturbation (zo-sgd, zo-sgd-mmt, zo-sgd-sign, zo-adam, zo-muon); their state (momentum,
Adam moments) lives beside the block in CPU memory and travels with it.
"""

from __future__ import annotations

import inspect
import math
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Sequence

import torch
from torch import nn

from zoft.core import Closure, Estimate, NonFiniteLossError, ParamSpace, Term, derive_seed, loss_value
from zoft.estimators.directions import SeededDirection
from zoft.optim.base import ZOOptimizer
from zoft.optim.transforms import chain_init

PLUS, MINUS = "+", "-"


def check_offloadable(optimizer: Any) -> None:
    """Refuse, in one line, an optimizer whose step is not the shell's central two-point step."""
    name = type(optimizer).__name__
    own = lambda name: inspect.unwrap(getattr(type(optimizer), name)) is not inspect.unwrap(getattr(ZOOptimizer, name))
    if not isinstance(optimizer, ZOOptimizer) or own("step") or own("_update"):
        raise ValueError(f"--offload-blocks runs the central two-point ZO step of zo-sgd, zo-sgd-mmt, zo-sgd-sign, "
                         f"zo-adam and zo-muon; {name} has its own step")
    cfg = optimizer.config
    if cfg["estimator"] != "central" or cfg["q"] != 1 or cfg["perturbation"] == "dap":
        raise ValueError(f"--offload-blocks needs the central estimator with q = 1 and a seeded perturbation; "
                         f"{name} uses estimator {cfg['estimator']}, q = {cfg['q']}, perturbation {cfg['perturbation']}")


class _Subset:
    """A seeded direction seen from a subset of the tensors: local index j is global ``index[j]``
    (the same draws and the same fused adds as the whole direction)."""

    def __init__(self, direction: SeededDirection, index: Sequence[int]) -> None:
        self.direction, self.index = direction, list(index)

    def materialize(self, j: int, p: torch.Tensor) -> torch.Tensor:
        return self.direction.materialize(self.index[j], p)

    def displace(self, j: int, p: torch.Tensor, alpha: float) -> None:
        self.direction.displace(self.index[j], p, alpha)

    def displace_all(self, params: Sequence[torch.Tensor], alphas: Sequence[float]) -> None:
        d = self.direction
        d.sampler.add_many_(params, [derive_seed(d.seed, i) for i in self.index], alphas)

    def support(self, j: int, p: torch.Tensor) -> torch.Tensor | None:
        return None

    def weight(self, j: int, p: torch.Tensor) -> float:
        return 1.0


class _Unit:
    """A module whose own trainable tensors move together: a decoder block (offloaded) or a
    resident module (embeddings, norm, head) on the compute device."""

    def __init__(self, module: nn.Module, slots: list[tuple[nn.Module, str, nn.Parameter, int]], offloaded: bool) -> None:
        self.module, self.slots, self.offloaded = module, slots, offloaded
        self.index = [j for _, _, _, j in slots]


class _Pending:
    """What a block still owes its tensors: the restore of the last step's - displacement,
    fused with that step's update (``est`` with group snapshots), or the restore alone."""

    def __init__(self, direction: SeededDirection, est: Estimate | None, groups: list[dict], restore: float = 1.0) -> None:
        self.direction, self.est, self.groups, self.restore = direction, est, groups, restore


class BlockOffload:
    """Runs ``optimizer``'s ZO steps on ``model`` with its decoder blocks offloaded (see the
    module docstring). ``device``: the compute device (default: where the model is).
    ``step(closure)`` replaces ``optimizer.step(closure)``; plain forwards (evaluation) upload
    each block, apply what it owes, and copy it back."""

    def __init__(self, model: nn.Module, optimizer: ZOOptimizer, device: torch.device | str | None = None,
                 prefetch: bool = True) -> None:
        from zoft.stream import decoder_blocks

        check_offloadable(optimizer)
        self.model, self.optimizer = model, optimizer
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        pairs = optimizer._tensors()
        self.params = [p for p, _ in pairs]
        index = {id(p): j for j, p in enumerate(self.params)}
        _, blocks = decoder_blocks(model)
        in_block = {id(m) for block in blocks for m in block.modules()}
        self.units: list[_Unit] = []
        for block in blocks:
            slots = [(owner, attr, p, index[id(p)]) for owner, attr, p in _own_slots(block) if id(p) in index]
            self.units.append(_Unit(block, slots, offloaded=True))
        for module in model.modules():
            if id(module) in in_block:
                continue
            slots = [(module, attr, p, index[id(p)]) for attr, p in module._parameters.items()
                     if p is not None and id(p) in index]
            if slots:
                self.units.append(_Unit(module, slots, offloaded=False))
        _check_units(model, self.units, len(self.params))
        owners: dict[int, int] = {}
        for unit in self.units:
            for _, _, p, j in unit.slots:
                owners[j] = owners.get(j, 0) + 1
        self.shared = {j for j, n in owners.items() if n > 1}
        if any(j in self.shared for u in self.units if u.offloaded for j in u.index):
            raise ValueError("--offload-blocks: a decoder block shares a tensor with another module")
        self.eps = [g["eps"] for _, g in pairs]
        self.sampler = optimizer.estimator.sampler
        self.mover = _Mover(self.device)
        self._place(blocks)
        self.pending: dict[int, _Pending] = {}
        self._pool = ThreadPoolExecutor(1) if prefetch else None
        self._ahead: dict[int, Future] = {}
        self._local = threading.local()
        self._step: _StepState | None = None
        self._plain: dict[int, bool] = {}
        self.most_on_device = 0  # the most blocks on the device at once (current + prefetched)
        self._handles = []
        for k, unit in enumerate(self.units):
            self._handles.append(unit.module.register_forward_pre_hook(lambda m, a, k=k: self._enter(k)))
            self._handles.append(unit.module.register_forward_hook(lambda m, a, o, k=k: self._leave(k)))

    # -- placement -------------------------------------------------------------------
    def _place(self, blocks: nn.ModuleList) -> None:
        """Blocks' trainable tensors (and their optimizer state) in CPU memory, pinned for a
        GPU; everything else on the compute device."""
        block_params = {id(p) for u in self.units if u.offloaded for _, _, p, _ in u.slots}
        for p in self.model.parameters():
            if id(p) in block_params:
                if p.device.type != "cpu":
                    p.data = p.data.cpu()
                if self.device.type == "cuda":
                    p.data = p.data.pin_memory()
            elif p.device != self.device:
                p.data = p.data.to(self.device)
        for module in self.model.modules():
            for name, buf in module._buffers.items():
                if buf is not None and buf.device != self.device:
                    module._buffers[name] = buf.to(self.device)

    # -- the step --------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Closure) -> torch.Tensor:
        """One ZO step, the two perturbed forwards run together block by block; returns the
        mean of the two losses (as the in-memory central step does)."""
        opt = self.optimizer
        for p, _ in opt._tensors():
            if opt.chain and not opt.state[p]:
                chain_init(opt.chain, p, opt.state[p])
        seed = derive_seed(opt.seed, opt.steps_taken)
        u = SeededDirection(derive_seed(seed, 0), self.sampler)  # the central estimator's first query
        self._step = step = _StepState(u)
        try:
            f_plus, f_minus = self._lockstep(closure)
            once = [*(step.offset.get(k) for k, u in enumerate(self.units) if u.offloaded), *step.resident_offset.values()]
            if any(r != -1.0 for r in once):  # each tensor at x - eps u: perturbed once, flipped once
                raise RuntimeError("--offload-blocks: every decoder block must run exactly once per forward; "
                                   "this model skips or repeats one")
            bad = next((f for f in (f_plus, f_minus) if not math.isfinite(f)), None)
            if bad is not None:
                raise NonFiniteLossError(f"loss is {bad} in an offloaded ZO step; parameters were restored "
                                         "(lower the lr or eps, or check the data)")
        except BaseException:
            self._undo(step)
            raise
        finally:
            self._step = None
        a = (f_plus - f_minus) / 2.0
        est = Estimate(terms=[Term(u, a)], pending=[(1.0, u)], loss=(f_plus + f_minus) / 2,
                       losses=[f_plus, f_minus], forward_passes=2)
        groups = [dict(g) for _, g in opt._tensors()]  # this step's lr, whatever the schedule sets next
        resident = sorted(step.resident_offset)
        if resident:  # the resident tensors are updated now; the blocks at their next upload
            self._apply(_Pending(u, est, groups), resident, [self.params[j] for j in resident])
        for k, unit in enumerate(self.units):
            if unit.offloaded:
                self.pending[k] = _Pending(u, est, groups)
        opt.forward_passes += 2
        opt.steps_taken += 1
        return torch.tensor(est.loss)

    def _lockstep(self, closure: Closure) -> tuple[float, float]:
        """f(x + eps u) and f(x - eps u): ``closure`` run by two threads in turns (see _StepState)."""
        step, out, errors = self._step, {}, []

        def run(role: str) -> None:
            self._local.role = role
            try:
                with torch.no_grad():
                    out[role] = loss_value(closure())
            except BaseException as err:  # noqa: BLE001 -- re-raised in the caller's thread
                errors.append(err)
                step.fail(err)
            finally:
                step.finish(role)

        threads = [threading.Thread(target=run, args=(role,), name=f"zoft-offload{role}") for role in (PLUS, MINUS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        if step.visits[PLUS] != step.visits[MINUS]:
            raise RuntimeError("--offload-blocks: the + and - forwards ran different modules")
        return out[PLUS], out[MINUS]

    def _undo(self, step: "_StepState") -> None:
        """After a failed step, every tensor back at x: a block still on the device is displaced
        back and copied home; one already home owes the restore of its net displacement."""
        on_device = list(step.device)
        for k in on_device:
            tensors = step.device.pop(k)
            self._displace(self.units[k].index, tensors, -step.offset.get(k, 0.0), step.direction)
            self._write_back(self.units[k], tensors)
        for k, r in step.offset.items():
            if k not in on_device and r:
                self.pending[k] = _Pending(step.direction, None, [], restore=-r)
        for j, r in step.resident_offset.items():
            self._displace([j], [self.params[j]], -r, step.direction)
        for unit in self.units:
            for owner, attr, p, _ in unit.slots:
                owner._parameters[attr] = p

    # -- unit visits: forward pre-hook (enter) and forward hook (leave) ------------------
    def _enter(self, k: int) -> None:
        step, unit = self._step, self.units[k]
        role = getattr(self._local, "role", None) if step is not None else None
        if role is None:  # a plain forward (evaluation): the block as it is now
            if unit.offloaded:
                tensors, changed = self._device_copy(k)
                self._plain[k] = changed
                self._swap_in(unit, tensors)
            return
        step.wait_turn(role, k)
        r = 1.0 if role == PLUS else -2.0
        if unit.offloaded:
            if role == PLUS:
                step.device[k] = self._device_copy(k)[0]
                self._prefetch(k + 1)
                self.most_on_device = max(self.most_on_device, len(step.device) + len(self._ahead))
            self._displace(unit.index, step.device[k], r, step.direction)
            step.offset[k] = step.offset.get(k, 0.0) + r
            self._swap_in(unit, step.device[k])
            return
        tensors = []
        for _, _, p, j in unit.slots:
            if step.first_user.setdefault(j, k) == k:  # this module perturbs the tensor
                self._displace([j], [p], r, step.direction)
                step.resident_offset[j] = step.resident_offset.get(j, 0.0) + r
                if role == PLUS and j in self.shared:
                    step.plus[j] = p.detach().clone()
                tensors.append(p)
            else:  # a later user of a shared tensor: its +eps copy for the + forward
                tensors.append(step.plus[j] if role == PLUS else p)
        self._swap_in(unit, tensors)

    def _leave(self, k: int) -> None:
        step, unit = self._step, self.units[k]
        role = getattr(self._local, "role", None) if step is not None else None
        if role is None:
            if unit.offloaded:
                if self._plain.pop(k, False):
                    self._write_back(unit, [owner._parameters[attr] for owner, attr, _, _ in unit.slots])
                else:
                    self._swap_in(unit, [p for _, _, p, _ in unit.slots])
            return
        if role == MINUS and unit.offloaded:
            self._write_back(unit, step.device.pop(k))
        elif role == MINUS:
            self._swap_in(unit, [p for _, _, p, _ in unit.slots])
        step.done(role, k)

    def _device_copy(self, k: int) -> tuple[list[torch.Tensor], bool]:
        """Block k's tensors on the device with what it owes applied (the last step's restore
        and update); whether anything was applied."""
        future = self._ahead.pop(k, None)
        tensors = future.result() if future is not None else self._upload(k)
        self.mover.ready()
        pending = self.pending.pop(k, None)
        if pending is not None:
            self._apply(pending, self.units[k].index, tensors, states=True)
        return tensors, pending is not None

    def _upload(self, k: int) -> list[torch.Tensor]:
        return [self.mover.up(p.detach()) for _, _, p, _ in self.units[k].slots]

    def _prefetch(self, k: int) -> None:
        if self._pool is None or k >= len(self.units) or not self.units[k].offloaded or k in self._ahead:
            return
        self._ahead[k] = self._pool.submit(self._upload, k)

    def _write_back(self, unit: _Unit, tensors: list[torch.Tensor]) -> None:
        """The block's device copies into its CPU tensors; the module points at those again."""
        for (owner, attr, p, _), t in zip(unit.slots, tensors):
            self.mover.down(t, p.data)
            owner._parameters[attr] = p
        self.mover.settle()

    @staticmethod
    def _swap_in(unit: _Unit, tensors: list[torch.Tensor]) -> None:
        for (owner, attr, p, _), t in zip(unit.slots, tensors):
            owner._parameters[attr] = p if t is p else nn.Parameter(t, requires_grad=False)

    def _displace(self, index: list[int], tensors: list[torch.Tensor], r: float, direction: SeededDirection) -> None:
        if r:
            ParamSpace(tensors, [self.eps[j] for j in index]).displace(_Subset(direction, index), r)

    def _apply(self, pending: _Pending, index: list[int], tensors: list[torch.Tensor], states: bool = False) -> None:
        """What ``pending`` owes tensors ``index`` (given as ``tensors``, the block's device
        copies or the resident tensors themselves), with their optimizer state moved beside them."""
        sub = _Subset(pending.direction, index)
        space = ParamSpace(tensors, [self.eps[j] for j in index])
        if pending.est is None:  # a failed step: the restore alone
            space.displace(sub, pending.restore)
            return
        est = Estimate(terms=[Term(sub, t.coef) for t in pending.est.terms], pending=[(1.0, sub)])
        opt = self.optimizer
        homes = [opt.state[self.params[j]] for j in index]
        moved = [self._state_up(s) for s in homes] if states else homes
        opt._update(space, est, [(t, pending.groups[j]) for t, j in zip(tensors, index)], moved)
        if states:
            for home, state in zip(homes, moved):
                for key, value in state.items():
                    if isinstance(value, torch.Tensor):
                        self.mover.down(value, home[key])
                    else:
                        home[key] = value
            self.mover.settle()

    def _state_up(self, state: dict) -> dict:
        return {k: self.mover.up(v) if isinstance(v, torch.Tensor) else v for k, v in state.items()}

    @property
    def bytes_moved(self) -> int:
        """Bytes copied between CPU memory and the device so far (blocks and their state)."""
        return self.mover.bytes_up + self.mover.bytes_down

    # -- outside a step --------------------------------------------------------------
    @torch.no_grad()
    def flush(self) -> None:
        """Apply every block's pending restore and update, so the CPU copies are the current
        weights (before an evaluation that reads them, a checkpoint or the end of a run)."""
        for k in sorted(self.pending):
            self._write_back(self.units[k], self._device_copy(k)[0])
        for future in self._ahead.values():
            future.result()
        self._ahead.clear()

    def close(self) -> None:
        self.flush()
        for handle in self._handles:
            handle.remove()
        if self._pool is not None:
            self._pool.shutdown(wait=True)


def _own_slots(block: nn.Module) -> list[tuple[nn.Module, str, nn.Parameter]]:
    return [(m, attr, p) for m in block.modules() for attr, p in m._parameters.items() if p is not None]


def _check_units(model: nn.Module, units: list[_Unit], n_params: int) -> None:
    covered = {j for u in units for j in u.index}
    if len(covered) != n_params:
        raise ValueError("--offload-blocks: some trainable tensors belong to no module it can place")
    unit_modules = {id(u.module) for u in units}
    for unit in units:
        for child in unit.module.modules():
            if child is not unit.module and id(child) in unit_modules:
                raise ValueError(f"--offload-blocks: {type(unit.module).__name__} owns trainable tensors and "
                                 f"contains {type(child).__name__}, which does too; it cannot run them in turns")


class _StepState:
    """The lockstep of one step: the + thread runs module k only after the - thread finished
    module k - 1, and the - thread runs module k only after the + thread finished it."""

    def __init__(self, direction: SeededDirection) -> None:
        self.direction = direction
        self.cv = threading.Condition()
        self.visits: dict[str, list[int]] = {PLUS: [], MINUS: []}
        self.finished: set[str] = set()
        self.error: BaseException | None = None
        self.device: dict[int, list[torch.Tensor]] = {}  # blocks on the device now
        self.offset: dict[int, float] = {}  # block -> its net displacement r (in eps u) this step
        self.resident_offset: dict[int, float] = {}  # resident tensor j -> the same
        self.first_user: dict[int, int] = {}  # resident tensor j -> the module that perturbs it
        self.plus: dict[int, torch.Tensor] = {}  # shared tensor j -> its value at x + eps u

    def wait_turn(self, role: str, k: int) -> None:
        with self.cv:
            n = len(self.visits[role])
            other = MINUS if role == PLUS else PLUS

            def ready() -> bool:
                if self.error is not None:
                    return True
                if role == PLUS:
                    return len(self.visits[MINUS]) == n or MINUS in self.finished
                return len(self.visits[PLUS]) > n or PLUS in self.finished

            self.cv.wait_for(ready)
            if self.error is not None:
                raise RuntimeError("--offload-blocks: the other perturbed forward failed") from self.error
            if role == MINUS and (len(self.visits[PLUS]) <= n or self.visits[PLUS][n] != k):
                raise RuntimeError("--offload-blocks: the + and - forwards ran different modules")
            if other in self.finished and len(self.visits[other]) <= n:
                raise RuntimeError("--offload-blocks: the + and - forwards ran different modules")

    def done(self, role: str, k: int) -> None:
        with self.cv:
            self.visits[role].append(k)
            self.cv.notify_all()

    def finish(self, role: str) -> None:
        with self.cv:
            self.finished.add(role)
            self.cv.notify_all()

    def fail(self, err: BaseException) -> None:
        with self.cv:
            self.error = self.error or err
            self.cv.notify_all()


class _Mover:
    """Copies between CPU memory and the compute device. On a GPU the uploads go on a side
    stream from pinned memory (overlapping the compute) and :meth:`ready` makes the compute
    stream wait for them; on CPU the "device" is another CPU buffer (the same code path, used
    by the tests), so a copy is a clone."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.stream = torch.cuda.Stream(device) if self.cuda else None
        self.bytes_up = self.bytes_down = 0
        self._lock = threading.Lock()

    def up(self, t: torch.Tensor) -> torch.Tensor:
        with self._lock:
            self.bytes_up += t.numel() * t.element_size()
        if not self.cuda:
            return t.clone()
        with torch.cuda.stream(self.stream):
            return t.to(self.device, non_blocking=True)

    def ready(self) -> None:
        if self.cuda:
            torch.cuda.current_stream(self.device).wait_stream(self.stream)

    def down(self, t: torch.Tensor, home: torch.Tensor) -> None:
        with self._lock:
            self.bytes_down += t.numel() * t.element_size()
        home.copy_(t, non_blocking=self.cuda)

    def settle(self) -> None:
        if self.cuda:  # the pinned CPU copy must be complete before anything reads or re-uploads it
            torch.cuda.current_stream(self.device).synchronize()

