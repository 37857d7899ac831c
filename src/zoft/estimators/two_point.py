"""Two-point estimators with q queries (MeZO's seed replay; Evseev et al., MIPT 2025; Ma, UMD 2025).

References: docs/ALGORITHMS.md, section References.

central: g = 1/q sum_i (f(x + mu u_i) - f(x - mu u_i)) / (2 mu) u_i      (2q evaluations)
forward: g = 1/q sum_i (f(x + mu u_i) - f(x)) / mu u_i                   (q + 1 evaluations)

Only q scalars and q seeds are kept. Between queries the parameters are restored; after
the last query the restore is left pending, to be fused with the optimizer's update.
With ``perturbation="dap"`` each u_i is a directionally aligned perturbation around a
reference a: the optimizer's momentum when it keeps one, else a pilot estimate from q
sphere queries; the result is then the average of the pilot and the DAP estimates.
"""

from __future__ import annotations

from typing import Literal

from zoft.core import Closure, Estimate, ParamSpace, Term, derive_seed
from zoft.estimators.base import Probe, Reference
from zoft.estimators.directions import AlignedDirection, SeededDirection
from zoft.perturb import get_sampler


class TwoPoint:
    OPTIONS: tuple[str, ...] = ()
    """Options of its own beyond q, perturbation and rng (none)."""

    @classmethod
    def build(cls, kind: Literal["central", "forward"], q: int, perturbation: str, rng: str) -> "TwoPoint":
        return cls(kind, q, perturbation, rng)

    def __init__(self, kind: Literal["central", "forward"], q: int, perturbation: str, rng: str = "torch") -> None:
        self.kind = kind
        self.q = q
        self.perturbation = perturbation
        self.rng = rng
        self.sampler = get_sampler("gaussian" if perturbation == "dap" else perturbation, rng)

    def estimate(
        self, closure: Closure, space: ParamSpace, seed: int, reference: Reference = None
    ) -> Estimate:
        probe = Probe(closure, space)
        f0 = probe.evaluate() if self.kind == "forward" else None
        if self.perturbation != "dap":
            terms = self._queries(probe, space, seed, f0, lambda s: SeededDirection(s, self.sampler))
            return probe.finish(terms, f0)
        pilot: list[Term] = []
        if reference is None:  # no momentum to align with: a pilot estimate from the sphere
            sphere = get_sampler("sphere", self.rng)
            pilot = self._queries(probe, space, derive_seed(seed, 1), f0,
                                  lambda s: SeededDirection(s, sphere))
            probe.undo()
            reference = _combination(pilot, space)
        ref = reference
        terms = self._queries(probe, space, derive_seed(seed, 2), f0,
                              lambda s: AlignedDirection(s, self.sampler, ref, space.params))
        if pilot:
            terms = [Term(t.direction, 0.5 * t.coef) for t in pilot + terms]
        return probe.finish(terms, f0)

    def _queries(self, probe: Probe, space: ParamSpace, seed: int, f0, make) -> list[Term]:
        terms = []
        for i in range(self.q):
            if i:
                probe.undo()
            u = make(derive_seed(seed, i))
            probe.move(u, 1.0)
            f_plus = probe.evaluate()
            if self.kind == "central":
                probe.move(u, -2.0)
                a = (f_plus - probe.evaluate()) / 2.0
            else:
                a = f_plus - f0
            terms.append(Term(u, a / self.q))
        return terms


def _combination(terms: list[Term], space: ParamSpace):
    """a_j = sum_i coef_i * s_j / eps_j * u_ij, regenerated on demand (no buffer)."""

    def reference(j, p):
        total = None
        for t in terms:
            u = t.direction.materialize(j, p).mul_(t.coef * space.grad_factor(j))
            total = u if total is None else total.add_(u)
        return total

    return reference
