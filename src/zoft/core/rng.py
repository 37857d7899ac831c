"""Explicit, derived randomness. zoft never touches the global RNG (no torch.manual_seed).

Every random draw of a ZO step comes from a ``torch.Generator`` seeded with a value
derived from ``(run seed, step, query, tensor index)`` by a SplitMix64 mix, so any
perturbation can be regenerated ("seed replay", MeZO) and a resumed run replays exactly.
"""

from __future__ import annotations

import torch

_MASK64 = (1 << 64) - 1


def splitmix64(x: int) -> int:
    # SplitMix64 finaliser (Steele, Lea & Flood 2014): a bijective 64-bit mixer.
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def derive_seed(*keys: int) -> int:
    """Mix integer keys into one 63-bit seed; distinct key tuples give unrelated seeds."""
    h = 0x243F6A8885A308D3  # pi's fractional bits: an arbitrary non-zero start
    for k in keys:
        h = splitmix64(h ^ (int(k) & _MASK64))
    return h >> 1  # torch.Generator.manual_seed takes values < 2**63 comfortably


_GENERATORS: dict[torch.device, torch.Generator] = {}


def generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator on ``device`` freshly seeded with ``seed`` (one cached object per device)."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    gen = _GENERATORS.get(device)
    if gen is None:
        gen = _GENERATORS[device] = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


def uniform(seed: int) -> float:
    """A float in [0, 1) from a seed, for scalar choices (coins, geometric draws)."""
    return (splitmix64(seed) >> 11) * (1.0 / (1 << 53))
