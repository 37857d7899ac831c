"""Counter-based noise: entry i of a tensor's noise is a pure function of (key, i).

torch's CPU generator (mt19937) produces its stream serially, one thread, and regenerating
135M Gaussian numbers costs about half a forward pass of SmolLM2-135M; a two-point ZO step
regenerates its direction three times. Here every entry is computed independently from a
32-bit integer hash of its index, so the whole draw is one element-wise expression: compiled
with ``torch.compile`` it becomes a single vectorised, multi-threaded loop (CPU) or kernel
(GPU) that reads and writes each parameter once ("generate and add" fused, no noise tensor).

Bits:      h(i) = mix(mix(i xor k1) + k2), with (k1, k2) the two 32-bit halves of the mixed key and
           mix the ``lowbias32`` integer hash (C. Wellons' hash-prospector, bias 0.17); it is a
           bijection of 32-bit words, so distinct entries of one key never share bits.
Gaussian:  Box-Muller on pairs: pair j gives r_j = sqrt(-2 ln u1), t_j = 2 pi u2 with
           u1 = (h >> 8 + 1) / 2^24 in (0, 1], u2 from a second hash of h; entry j of a tensor
           of n entries is r_j cos t_j for j < m = ceil(n / 2), entry m + j is r_j sin t_j (two
           independent N(0, 1) per hash pair and logarithm). |z| <= 5.77 (torch.randn's float
           Box-Muller has the same kind of cut-off). ln, cos and sin are short polynomials
           written here in tensor ops (|z - exact Box-Muller| < 1e-6, tested).
Rademacher: entry i is bit (i mod 32) of the hash of i // 32: one hash serves 32 entries.
Sphere:    the Gaussian scaled to radius sqrt(n) per tensor, as the torch sampler (one more
           pass: the norm).

Three paths compute these definitions. On the CPU, float32/float64 tensors go through a small
C kernel (``counter_kernel.c``, built at first use by :mod:`zoft.perturb.native`) that updates
a whole list of tensors in one multi-threaded call; elsewhere (GPU, half precision) the torch
expressions below are compiled with ``torch.compile``; without a compiler they run eagerly
(correct, several times slower than torch's generator). ``ZOFT_NATIVE=0`` and
``ZOFT_COMPILE=0`` switch the first two off. The integer part is exact on every path, so a key
gives the same bits everywhere; the Gaussian's floating-point part may differ in the last ulp
between paths, and is bitwise identical between reruns on one path (the native kernel's
result does not depend on the number of threads).
"""

from __future__ import annotations

import logging
import math
import os
from typing import Callable, Sequence

import torch

from zoft.core.rng import splitmix64
from zoft.perturb import native

log = logging.getLogger(__name__)

_M1 = 0x7FEB352D
_M2 = 0x846CA68B - (1 << 32)  # as a signed 32-bit constant
_SECOND = 0x5BD1E995  # decorrelates the second uniform of Box-Muller from the first
_TWO_PI = 2.0 * math.pi
_LN2 = math.log(2.0)
_SQRT2 = math.sqrt(2.0)
_INV_2_24 = 1.0 / (1 << 24)
MAX_NUMEL = 1 << 31  # entries are indexed by 32-bit counters


def _shr(x: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int32 words (torch's >> is arithmetic)."""
    return (x >> s) & ((1 << (32 - s)) - 1)


def mix(x: torch.Tensor) -> torch.Tensor:
    """lowbias32: x ^= x >> 16; x *= 0x7feb352d; x ^= x >> 15; x *= 0x846ca68b; x ^= x >> 16."""
    x = x ^ _shr(x, 16)
    x = x * _M1
    x = x ^ _shr(x, 15)
    x = x * _M2
    return x ^ _shr(x, 16)


def split_key(key: int) -> tuple[int, int]:
    """Two 32-bit words (signed int32 values) from a SplitMix64 mix of the key: neighbouring
    keys get unrelated words (with raw halves, keys k and k ^ 1 would give the same stream
    with neighbouring entries swapped)."""
    mixed = splitmix64(key & 0xFFFFFFFFFFFFFFFF)
    lo, hi = mixed & 0xFFFFFFFF, (mixed >> 32) & 0xFFFFFFFF
    return (lo - (1 << 32) if lo >= 1 << 31 else lo), (hi - (1 << 32) if hi >= 1 << 31 else hi)


def bits(n: int, k1: int, k2: int, device: torch.device) -> torch.Tensor:
    i = torch.arange(n, dtype=torch.int32, device=device)
    return mix(mix(i ^ k1) + k2)


def _uniform24(h: torch.Tensor) -> torch.Tensor:
    return _shr(h, 8).to(torch.float32)


def _log(x: torch.Tensor) -> torch.Tensor:
    """ln x for float32 x > 0: exponent from the bits, mantissa m in [sqrt(1/2), sqrt(2)) by
    ln m = 2 atanh(s), s = (m - 1) / (m + 1), |s| < 0.172, series to s^9 (error < 1e-7)."""
    b = x.view(torch.int32)
    e = ((b >> 23) & 0xFF) - 127
    m = ((b & 0x7FFFFF) | 0x3F800000).view(torch.float32)  # [1, 2)
    big = m > _SQRT2
    m = torch.where(big, m * 0.5, m)
    e = e + big.to(torch.int32)
    s = (m - 1.0) / (m + 1.0)
    s2 = s * s
    series = 2.0 + s2 * (2.0 / 3 + s2 * (2.0 / 5 + s2 * (2.0 / 7 + s2 * (2.0 / 9))))
    return e.to(torch.float32) * _LN2 + s * series


def _cos_sin_2pi(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of 2 pi u for u in [0, 1): x = 2 pi (u - 1/2) in [-pi, pi) is folded to
    y in [-pi/2, pi/2] (cos(x) = -cos(pi sgn(x) - x), sin unchanged), then Taylor polynomials
    to y^12 and y^13 (error < 7e-7 at |y| = pi/2)."""
    x = _TWO_PI * (u - 0.5)  # cos(2 pi u) = -cos(x), sin(2 pi u) = -sin(x)
    fold = x.abs() > 0.5 * math.pi
    y = torch.where(fold, torch.where(x > 0, math.pi - x, -math.pi - x), x)
    y2 = y * y
    c = 1.0 + y2 * (-1 / 2 + y2 * (1 / 24 + y2 * (-1 / 720 + y2 * (1 / 40320 + y2 * (
        -1 / 3628800 + y2 * (1 / 479001600))))))
    s = y * (1.0 + y2 * (-1 / 6 + y2 * (1 / 120 + y2 * (-1 / 5040 + y2 * (1 / 362880 + y2 * (
        -1 / 39916800 + y2 * (1 / 6227020800)))))))
    return torch.where(fold, c, -c), -s


def _gaussian_pairs(m: int, k1: int, k2: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Box-Muller on pairs j < m: (r_j cos t_j, r_j sin t_j), two independent N(0, 1) each."""
    h = bits(m, k1, k2, device)
    u1 = (_uniform24(h) + 1.0) * _INV_2_24
    u2 = _uniform24(mix(h ^ _SECOND)) * _INV_2_24
    r = torch.sqrt(-2.0 * _log(u1))
    c, s = _cos_sin_2pi(u2)
    return r * c, r * s


def _gaussian(n: int, k1: int, k2: int, device: torch.device) -> torch.Tensor:
    """Entry i < m = ceil(n / 2) is the cosine of pair i, entry m + i the sine of pair i: both
    halves are contiguous, so the fused add reads and writes each parameter once."""
    m = n - n // 2
    zc, zs = _gaussian_pairs(m, k1, k2, device)
    return torch.cat([zc, zs[: n - m]])


def _rademacher_bits(i: torch.Tensor, k1: int, k2: int) -> torch.Tensor:
    """Entry i is bit (i mod 32) of the hash of i // 32, as -1 / +1 (one hash per 32 entries)."""
    h = mix(mix((i >> 5) ^ k1) + k2)
    return ((h >> (i & 31)) & 1) * 2 - 1


def _rademacher(n: int, k1: int, k2: int, device: torch.device) -> torch.Tensor:
    i = torch.arange(n, dtype=torch.int32, device=device)
    return _rademacher_bits(i, k1, k2).to(torch.float32)


_KINDS: dict[str, Callable[..., torch.Tensor]] = {"gaussian": _gaussian, "rademacher": _rademacher}


def _draw(kind: str, n: int, k1: int, k2: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return _KINDS[kind](n, k1, k2, device).to(dtype)


def _noise_dtype(p: torch.Tensor) -> torch.dtype:
    # the product alpha * z in float64 for float64 parameters, else in float32 (as the torch
    # samplers' float32 noise for half-precision parameters)
    return torch.float64 if p.dtype == torch.float64 else torch.float32


def _add_gaussian(first: torch.Tensor, second: torch.Tensor, k1: int, k2: int, alpha: float) -> None:
    """first += alpha * cosines, second += alpha * sines (the two halves of one flat tensor,
    passed as two views so that the compiled kernel computes each pair once)."""
    zc, zs = _gaussian_pairs(first.numel(), k1, k2, first.device)
    dtype = _noise_dtype(first)
    first.add_(zc.to(dtype) * alpha)
    second.add_(zs[: second.numel()].to(dtype) * alpha)


def _add_rademacher(rows: torch.Tensor, k1: int, k2: int, alpha: float) -> None:
    """rows (r, 32) += alpha * noise: one hash per row, its 32 bits along the row."""
    j = torch.arange(rows.shape[0], dtype=torch.int32, device=rows.device)
    h = mix(mix(j ^ k1) + k2)
    col = torch.arange(32, dtype=torch.int32, device=rows.device)
    rows.add_((((h[:, None] >> col) & 1) * 2 - 1).to(_noise_dtype(rows)) * alpha)


def _sum_sq(kind: str, n: int, k1: int, k2: int, device: torch.device) -> torch.Tensor:
    z = _KINDS[kind](n, k1, k2, device).double()
    return (z * z).sum()


_COMPILED: dict[str, Callable] = {}
_compile_failed = False


def _compiled(name: str, fn: Callable) -> Callable:
    """fn compiled once (dynamic shapes: one kernel for every tensor size), or fn itself."""
    if _compile_failed or os.environ.get("ZOFT_COMPILE", "1") == "0":
        return fn
    if name not in _COMPILED:
        _COMPILED[name] = _compile_or_fallback(fn)
    return _COMPILED[name]


RECOMPILE_LIMIT = 64
"""Kernels one compiled function may hold. Sizes 0 and 1, equal or unequal Gaussian halves,
dtypes and devices each get their own kernel (about 8 per device in practice); past dynamo's
default limit (8) it would silently run new variants eagerly, and since eager and compiled
Gaussians may differ in the last ulp, a key's numbers would depend on what ran before in the
process (a resumed run would not match an uninterrupted one). So dynamo's limit is raised to
this (process-wide, never lowered) and a hit is an error, never a silent switch."""


def _compile_or_fallback(fn: Callable) -> Callable:
    compiled = torch.compile(fn, dynamic=True, fullgraph=True)
    # process-wide (a per-call config.patch costs 60 us, 3% of a step); only ever raised
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)

    def run(*args):
        global _compile_failed
        if _compile_failed:
            return fn(*args)
        try:
            return compiled(*args)
        except torch._dynamo.exc.FailOnRecompileLimitHit as err:  # fullgraph: a hard failure
            raise RuntimeError(f"zoft counter noise: more than {RECOMPILE_LIMIT} compiled variants of "
                               f"{fn.__name__}; raise zoft.perturb.counter.RECOMPILE_LIMIT") from err
        except Exception as err:  # no C++ compiler, unsupported backend: same maths, eagerly
            _compile_failed = True
            log.warning("zoft: torch.compile of the counter noise failed (%s: %s); running it "
                        "eagerly for the rest of the process (same distributions; the Gaussian may differ in the last "
                        "ulp). Set ZOFT_COMPILE=0 to skip the attempt.",
                        type(err).__name__, str(err).splitlines()[0] if str(err) else "")
            return fn(*args)

    return run


def _check(n: int) -> None:
    if n >= MAX_NUMEL:
        raise ValueError(f"counter noise indexes entries with 32-bit counters; a tensor of {n} "
                         f"entries is too large (split it, or use rng='torch')")


_NATIVE_KINDS = {"gaussian": native.GAUSSIAN, "rademacher": native.RADEMACHER}


def draw(kind: str, shape: torch.Size, key: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The noise tensor of ``key`` (``kind``: gaussian | rademacher)."""
    n = math.prod(shape)
    _check(n)
    k1, k2 = split_key(key)
    device = torch.device(device)
    lib = native.library()
    if lib is not None and device.type == "cpu" and dtype in native.DTYPE_CODES:
        out = torch.zeros(n, dtype=dtype)
        native.add(lib, _NATIVE_KINDS[kind], [out], [k1], [k2], [1.0])
        return out.view(shape)
    return _compiled(f"draw-{kind}", _draw)(kind, n, k1, k2, device, dtype).view(shape)


def add_(kind: str, p: torch.Tensor, key: int, alpha: float) -> None:
    """p += alpha * draw(kind, p.shape, key): one pass over p, no noise tensor."""
    add_many_(kind, [p], [key], [alpha])


def add_many_(kind: str, tensors: Sequence[torch.Tensor], keys: Sequence[int], alphas: Sequence[float]) -> None:
    """tensors[t] += alphas[t] * draw(kind, tensors[t].shape, keys[t]) for every t. On the CPU
    the native kernel does every float32/float64 tensor in one multi-threaded call; the others
    (GPU, half precision, non-contiguous) go through the compiled torch path one by one."""
    for p in tensors:
        _check(p.numel())
    lib = native.library()
    fast = [t for t, p in enumerate(tensors) if lib is not None and native.handles(p)]
    if fast:
        words = [split_key(keys[t]) for t in fast]
        native.add(lib, _NATIVE_KINDS[kind], [tensors[t] for t in fast], [w[0] for w in words],
                   [w[1] for w in words], [float(alphas[t]) for t in fast])
    done = set(fast)
    for t, p in enumerate(tensors):
        if t not in done:
            _add_compiled(kind, p, keys[t], float(alphas[t]))


def _add_compiled(kind: str, p: torch.Tensor, key: int, alpha: float) -> None:
    k1, k2 = split_key(key)
    if not p.is_contiguous():
        p.add_(draw(kind, p.shape, key, _noise_dtype(p), p.device), alpha=alpha)
        return
    flat = p.view(-1)
    if kind == "gaussian":
        m = flat.numel() - flat.numel() // 2
        _compiled("add-gaussian", _add_gaussian)(flat[:m], flat[m:], k1, k2, alpha)
        return
    body = flat.numel() // 32 * 32
    if body:
        _compiled("add-rademacher", _add_rademacher)(flat[:body].view(-1, 32), k1, k2, alpha)
    if body < flat.numel():  # the last < 32 entries
        i = torch.arange(body, flat.numel(), dtype=torch.int32, device=p.device)
        flat[body:].add_(_rademacher_bits(i, k1, k2).to(_noise_dtype(p)) * alpha)


def sum_of_squares(kind: str, n: int, key: int, device: torch.device) -> float:
    """||draw(kind, (n,), key)||^2 without keeping the noise (for the sphere's radius)."""
    _check(n)
    k1, k2 = split_key(key)
    lib = native.library()
    if kind == "gaussian" and lib is not None and torch.device(device).type == "cpu":
        return native.gaussian_sum_of_squares(lib, n, k1, k2)
    return float(_compiled(f"sumsq-{kind}", _sum_sq)(kind, n, k1, k2, torch.device(device)))
