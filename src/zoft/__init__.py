"""zoft: zeroth-order (forward-pass-only) fine-tuning of language models.

    import zoft
    zoft.list_optimizers()
    opt = zoft.make_optimizer("zo-sgd", model.parameters(), lr=1e-6, eps=1e-3)
    loss = opt.step(closure)   # closure() -> scalar loss; ZO optimizers never call backward
"""

from zoft.core import NonFiniteLossError
from zoft.estimators import ESTIMATORS, make_estimator
from zoft.optim import OPTIMIZERS, is_zeroth_order, list_optimizers, make_optimizer
from zoft.perturb import PERTURBATIONS

__version__ = "0.1.0"

__all__ = ["ESTIMATORS", "NonFiniteLossError", "OPTIMIZERS", "PERTURBATIONS", "__version__",
           "is_zeroth_order", "list_optimizers", "make_estimator", "make_optimizer"]
