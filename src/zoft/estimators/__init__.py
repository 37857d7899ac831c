"""ZO gradient estimators (seed-replay engine). Depend on zoft.core and zoft.perturb only.

``make_estimator(name, q=..., perturbation=..., **options)`` builds one by name:

  central, forward               two-point, q queries, any perturbation (dap included)
  telescoping-p4, telescoping-p3 unbiased telescoping family (geometric or zipf terms)
  coordinate                     JAGUAR's random row blocks with central differences
"""

from __future__ import annotations

from functools import partial
from typing import Callable

from zoft.core import Registry
from zoft.core.checks import check_choice, check_int
from zoft.estimators.base import Estimator, Probe, Reference
from zoft.estimators.coordinate import Coordinate
from zoft.estimators.telescoping import Telescoping
from zoft.estimators.two_point import TwoPoint
from zoft.perturb import PERTURBATIONS, RNGS

ESTIMATORS: Registry[Callable[..., Estimator]] = Registry("estimator")
ESTIMATORS.register("central", partial(TwoPoint, "central"))
ESTIMATORS.register("forward", partial(TwoPoint, "forward"))
ESTIMATORS.register("telescoping-p4", partial(Telescoping, "p4"))
ESTIMATORS.register("telescoping-p3", partial(Telescoping, "p3"))
ESTIMATORS.register("coordinate", Coordinate)

_TELESCOPING_LAWS = ("geometric", "zipf")
_BLOCK_SIGNS = ("rademacher", "ones")


def make_estimator(
    name: str,
    q: int = 1,
    perturbation: str = "gaussian",
    telescoping_law: str = "geometric",
    telescoping_param: float = 0.5,
    telescoping_terms: int = 8,
    block_fraction: float = 0.1,
    block_signs: str = "rademacher",
    rng: str = "torch",
) -> Estimator:
    """Build an estimator by name; every invalid value raises a ValueError naming it."""
    build = ESTIMATORS.get(name)
    check_int("q", q, 1)
    check_choice("perturbation", perturbation, PERTURBATIONS)
    check_choice("rng", rng, RNGS)
    if name == "coordinate":
        check_choice("block_signs", block_signs, _BLOCK_SIGNS)
        if not 0.0 < block_fraction <= 1.0:
            raise ValueError(f"invalid block_fraction {block_fraction!r}; must be in (0, 1]")
        return build(q, block_fraction, block_signs)
    if name.startswith("telescoping"):
        check_choice("telescoping_law", telescoping_law, _TELESCOPING_LAWS)
        if perturbation == "dap":
            raise ValueError("invalid perturbation 'dap' for telescoping; allowed: gaussian, rademacher, sphere")
        ok = 0 < telescoping_param < 1 if telescoping_law == "geometric" else telescoping_param > 1
        if not ok:
            raise ValueError(
                f"invalid telescoping_param {telescoping_param!r} for {telescoping_law}: "
                "geometric needs 0 < c < 1, zipf needs s > 1"
            )
        check_int("telescoping_terms", telescoping_terms, 1)
        return build(q, perturbation, telescoping_law, telescoping_param, telescoping_terms, rng)
    return build(q, perturbation, rng)


__all__ = ["ESTIMATORS", "Estimator", "Probe", "Reference", "make_estimator"]
