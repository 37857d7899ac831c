"""ZO gradient estimators (seed-replay engine). Depend on zoft.core and zoft.perturb only.

``make_estimator(name, q=..., perturbation=..., **options)`` builds one by name:

  central, forward               two-point, q queries, any perturbation (dap included)
  telescoping-p4, telescoping-p3 unbiased telescoping family (geometric or zipf terms)
  coordinate                     JAGUAR's random row blocks with central differences
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from zoft.core import Registry
from zoft.core.checks import check_choice, check_int
from zoft.estimators.base import Estimator, Probe, Reference
from zoft.estimators.coordinate import Coordinate
from zoft.estimators.telescoping import Telescoping
from zoft.estimators.two_point import TwoPoint
from zoft.perturb import PERTURBATIONS, RNGS


@dataclass(frozen=True)
class EstimatorKind:
    """A registered estimator: its class, the leading arguments of its variant, and the options
    it declares (``cls.OPTIONS``); ``cls.build`` checks them."""

    cls: type
    args: tuple = ()

    @property
    def options(self) -> tuple[str, ...]:
        return self.cls.OPTIONS

    def build(self, q: int, perturbation: str, rng: str, **options: Any) -> Estimator:
        return self.cls.build(*self.args, q, perturbation, rng, **options)


ESTIMATORS: Registry[EstimatorKind] = Registry("estimator")
ESTIMATORS.register("central", EstimatorKind(TwoPoint, ("central",)))
ESTIMATORS.register("forward", EstimatorKind(TwoPoint, ("forward",)))
ESTIMATORS.register("telescoping-p4", EstimatorKind(Telescoping, ("p4",)))
ESTIMATORS.register("telescoping-p3", EstimatorKind(Telescoping, ("p3",)))
ESTIMATORS.register("coordinate", EstimatorKind(Coordinate))


def option_names() -> tuple[str, ...]:
    """Every estimator option any registered estimator declares (an optimizer passes these on)."""
    return tuple(sorted({o for name in ESTIMATORS for o in ESTIMATORS.get(name).options} | {"rng"}))


def make_estimator(name: str, q: int = 1, perturbation: str = "gaussian", rng: str = "torch",
                   **options: Any) -> Estimator:
    """Build an estimator by name; every invalid value raises a ValueError naming it. Options that
    another estimator declares are ignored (an optimizer's config may carry them); options no
    estimator declares are an error."""
    kind = ESTIMATORS.get(name)
    check_int("q", q, 1)
    check_choice("perturbation", perturbation, PERTURBATIONS)
    check_choice("rng", rng, RNGS)
    unknown = sorted(set(options) - set(option_names()))
    if unknown:
        raise ValueError(f"unknown estimator option(s) {unknown}; known: {', '.join(option_names())}")
    return kind.build(q, perturbation, rng, **{k: v for k, v in options.items() if k in kind.options})


__all__ = ["ESTIMATORS", "Estimator", "EstimatorKind", "Probe", "Reference", "make_estimator", "option_names"]
