"""The order in which training examples are seen: a pure function of (seed, micro-batch index),
so a resumed run sees exactly the batches an uninterrupted run would have seen."""

from __future__ import annotations

import random
from typing import Sequence, TypeVar

from zoft.core import derive_seed

T = TypeVar("T")


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    order = list(range(n))
    random.Random(derive_seed(seed, 0xDA7A, epoch)).shuffle(order)
    return order


def micro_batch(examples: Sequence[T], index: int, batch_size: int, seed: int) -> list[T]:
    """Micro-batch ``index`` of an endless stream of epochs, each a fresh permutation."""
    n = len(examples)
    if n == 0:
        raise ValueError("the training split is empty")
    out, pos = [], index * batch_size
    while len(out) < batch_size:
        epoch, offset = divmod(pos, n)
        order = epoch_order(n, seed, epoch)
        take = min(batch_size - len(out), n - offset)
        out += [examples[i] for i in order[offset: offset + take]]
        pos += take
    return out
