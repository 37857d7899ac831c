"""Coordinate-block estimator of JAGUAR (Petrov et al. 2025, arXiv 2506.04430).

Each query picks a random block of rows in every tensor and takes a central difference
along it: g = (f(x + tau e_S) - f(x - tau e_S)) / (2 tau) * e_S / P(row in S), with e_S the
+-1 (or all-ones) indicator of the block. The optimizer keeps coordinate momentum on the
block only (see zoft.optim), which is what makes the method work.
"""

from __future__ import annotations

from typing import Literal

from zoft.core import Closure, Estimate, ParamSpace, Term, derive_seed
from zoft.core.checks import check_choice, is_number
from zoft.estimators.base import Probe, Reference
from zoft.estimators.directions import BlockDirection


_BLOCK_SIGNS = ("rademacher", "ones")


class Coordinate:
    OPTIONS = ("block_fraction", "block_signs")
    """Options of its own: the fraction of rows per block, the signs of a block's moves. The
    perturbation and the noise engine do not apply (blocks are coordinate directions)."""

    @classmethod
    def build(cls, q: int, perturbation: str, rng: str, block_fraction: float = 0.1,
              block_signs: str = "rademacher") -> "Coordinate":
        check_choice("block_signs", block_signs, _BLOCK_SIGNS)
        if not (is_number(block_fraction) and 0.0 < block_fraction <= 1.0):
            raise ValueError(f"invalid block_fraction {block_fraction!r}; must be in (0, 1]")
        return cls(q, block_fraction, block_signs)

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
