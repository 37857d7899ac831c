"""zoft.core: types, registry and seeded generators. Depends on torch only."""

from zoft.core.paths import cache_dir
from zoft.core.registry import Registry
from zoft.core.rng import derive_seed, generator, uniform
from zoft.core.types import (
    Closure,
    Direction,
    Estimate,
    NonFiniteLossError,
    ParamSpace,
    Term,
    loss_value,
)

__all__ = [
    "Closure",
    "Direction",
    "Estimate",
    "NonFiniteLossError",
    "ParamSpace",
    "Registry",
    "Term",
    "cache_dir",
    "derive_seed",
    "generator",
    "loss_value",
    "uniform",
]
