"""Coordinate-block estimator of JAGUAR (Petrov et al. 2025, arXiv 2506.04430).

Each query picks a random block of rows in every tensor and takes a central difference
along it: g = (f(x + tau e_S) - f(x - tau e_S)) / (2 tau) * e_S / P(row in S), with e_S the
+-1 (or all-ones) indicator of the block. The optimizer keeps coordinate momentum on the
block only (see zoft.optim), which is what makes the method work.
"""

from __future__ import annotations

from typing import Literal

from zoft.core import Closure, Estimate, ParamSpace, Term, derive_seed
from zoft.estimators.base import Probe, Reference
from zoft.estimators.directions import BlockDirection


class Coordinate:
    def __init__(self, q: int, block_fraction: float, block_signs: Literal["rademacher", "ones"]) -> None:
        self.q = q
        self.block_fraction = block_fraction
        self.block_signs = block_signs

    def estimate(
        self, closure: Closure, space: ParamSpace, seed: int, reference: Reference = None
    ) -> Estimate:
        probe = Probe(closure, space)
        terms = []
        for i in range(self.q):
            if i:
                probe.undo()
            u = BlockDirection(derive_seed(seed, i), self.block_fraction, self.block_signs)
            probe.move(u, 1.0)
            f_plus = probe.evaluate()
            probe.move(u, -2.0)
            terms.append(Term(u, (f_plus - probe.evaluate()) / 2.0 / self.q))
        return probe.finish(terms)
