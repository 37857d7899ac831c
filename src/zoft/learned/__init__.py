"""ZO Fine-tuner (Zhang et al. 2025): learned per-block perturbation scales for ZO fine-tuning.

    finetuner = learn_finetuner(model, batches, objective.loss, base_model="HuggingFaceTB/SmolLM2-135M",
                                steps=500, lr=1e-4, eps=1e-3, reset_every=100, out="smollm2.finetuner")
    opt = zoft.make_optimizer("zo-finetuner", trainable_parameters(model), finetuner="smollm2.finetuner",
                              lr=1e-4, eps=1e-3)

- :mod:`zoft.learned.pertnn`: PertNN (one block's MLP 5 -> 64 -> 1) and the energy normalisation.
- :mod:`zoft.learned.finetuner`: block layouts, the FineTuner container and its file.
- :mod:`zoft.learned.meta`: meta-training along a trajectory (one-step unroll).
- the ``zo-finetuner`` optimizer itself is :class:`zoft.optim.finetuner.ZOFineTuner` (imports run
  one way: optim uses these networks, learned never imports optim).
"""

from zoft.learned.finetuner import Block, FineTuner, FineTunerConfig, block_layout
from zoft.learned.meta import MetaHistory, learn_finetuner, meta_train
from zoft.learned.pertnn import FEATURES, PertNN, normalised_scales

__all__ = ["FEATURES", "Block", "FineTuner", "FineTunerConfig", "MetaHistory", "PertNN",
           "block_layout", "learn_finetuner", "meta_train", "normalised_scales"]
