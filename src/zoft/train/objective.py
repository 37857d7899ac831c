"""Model + examples -> loss closures and predictions (MeZO's classification mode).

(A masked LM, e.g. RoBERTa, scores each candidate at mask tokens that stand for it instead:
:func:`masked_rows`. The rest of this module serves both kinds.)

Every candidate of an example is scored as the sequence prompt tokens + candidate tokens.
Candidates whose inputs are a prefix of another candidate's share that input row (a causal
model's logits at a position depend only on the tokens up to it), so single-token verbalizers
such as SST-2's " great"/" terrible" or CB's Yes/No/Maybe cost one row per example, not one per
candidate. A candidate's score is its length-normalised log-likelihood (mean log-prob of its
tokens); the training loss is the cross-entropy over the candidates' scores (classification), or the
mean token NLL of the gold answer (generation). Logits are computed only at the scored
positions: a pre-hook on the output embedding gathers those hidden states before the LM head,
so a 49k-word vocabulary is projected for a few tokens per sequence, not for all of them.
"""

from __future__ import annotations

import math
import sys
import threading
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch

from zoft.core.types import NonFiniteLossError
from zoft.tasks import Example


@dataclass
class Batch:
    """Padded input rows and where each candidate is scored in them.

    input_ids, attention_mask: (R, T) for R input rows (one row may serve several candidates).
    rows, cols, targets: (N,) scored positions: logits at (rows, cols) predict targets.
    cands: (N,) the candidate each scored position belongs to.
    owners: (C,) the example each candidate belongs to; labels: (E,) gold index per example
    (-1 if none); first: (E,) index of each example's first candidate; sizes: candidates each.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    rows: torch.Tensor
    cols: torch.Tensor
    targets: torch.Tensor
    cands: torch.Tensor
    owners: torch.Tensor
    labels: torch.Tensor
    first: torch.Tensor
    sizes: torch.Tensor

    def to(self, device: torch.device) -> "Batch":
        return Batch(**{k: v.to(device) for k, v in self.__dict__.items()})


def _sequences(tokenizer, example: Example, max_length: int, generation: bool) -> list[tuple[list[int], int]]:
    """(token ids, number of scored tail tokens) for each candidate (or the gold answer)."""
    prompt = tokenizer(example.prompt)["input_ids"]
    conts = example.candidates or (example.answers[:1] if generation else ())
    if not conts:
        raise ValueError(f"example has neither candidates nor answers: {example.prompt[:60]!r}")
    out = []
    for cont in conts:
        tail = tokenizer(cont, add_special_tokens=False)["input_ids"]
        if generation and tokenizer.eos_token_id is not None:
            tail = tail + [tokenizer.eos_token_id]
        tail = tail[: max_length - 1]
        head = prompt[-(max_length - len(tail)):]  # truncate the prompt from the left
        if not head:
            raise ValueError(f"the prompt is empty after tokenization, nothing to condition on: {example.prompt!r}")
        out.append((head + tail, len(tail)))
    return out


def collate(tokenizer, examples: Sequence[Example], max_length: int = 256,
            generation: bool = False, mask_token_id: int | None = None) -> Batch:
    """The padded rows of ``examples`` and where each candidate is scored in them.

    ``mask_token_id``: the model is a masked LM (:func:`masked_rows`); else a causal LM, whose
    candidates sharing a prefix share a row."""
    if mask_token_id is not None and generation:
        raise ValueError("a masked language model scores candidates; it cannot train a generation task")
    rows_ids: list[list[int]] = []  # the input tokens of each row
    rows, cols, targets, cands, owners, first, sizes = [], [], [], [], [], [], []
    for e, ex in enumerate(examples):
        if mask_token_id is None:
            scored = [(ids[:-1], range(len(ids) - n_tail - 1, len(ids) - 1), ids[len(ids) - n_tail:])
                      for ids, n_tail in _sequences(tokenizer, ex, max_length, generation)]
            find = _row_for  # the last token is a target, never an input
        else:
            scored, find = masked_rows(tokenizer, ex, max_length, mask_token_id), _same_row
        first.append(len(owners))
        sizes.append(len(scored))
        mine: list[int] = []  # this example's rows
        for context, where, tail in scored:
            row = find(rows_ids, mine, context)
            rows += [row] * len(tail)
            cols += where
            targets += tail
            cands += [len(owners)] * len(tail)
            owners.append(e)
    width = max(len(ids) for ids in rows_ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(rows_ids), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows_ids), width), dtype=torch.long)
    for r, ids in enumerate(rows_ids):
        input_ids[r, : len(ids)] = torch.tensor(ids)
        mask[r, : len(ids)] = 1
    labels = [ex.label if ex.label is not None else -1 for ex in examples]
    t = lambda xs: torch.tensor(xs, dtype=torch.long)
    return Batch(input_ids, mask, t(rows), t(cols), t(targets), t(cands), t(owners), t(labels),
                 t(first), t(sizes))


def masked_rows(tokenizer, example: Example, max_length: int, mask_token_id: int
                ) -> list[tuple[list[int], list[int], list[int]]]:
    """(input ids, mask positions, candidate token ids) of each candidate, for a masked LM.

    The input is the prompt followed by one mask token per token of the candidate, inside the
    tokenizer's special tokens (RoBERTa: ``<s> prompt <mask> </s>``, MeZO's RoBERTa template
    ``*cls**sent_0*_It_was*mask*.*sep+*`` without the final period); the candidate's score is
    the mean log-prob of its tokens at the masks. A one-token verbalizer (" great") is the
    classic prompt-based classifier (Gao et al. 2021, used by MeZO for RoBERTa-large); longer
    candidates are scored token by token at their masks, all masked at once."""
    if not example.candidates:
        raise ValueError(f"example has no candidates to score: {example.prompt[:60]!r}")
    lead, plain, trail = _framed(tokenizer, example.prompt)
    out = []
    for cont in example.candidates:
        tail = tokenizer(cont, add_special_tokens=False)["input_ids"]
        room = max_length - len(lead) - len(trail) - len(tail)
        if not tail or room < 1:
            raise ValueError(f"candidate {cont!r} has {len(tail)} tokens: nothing to score, or no room for "
                             f"the prompt in max_length {max_length}")
        head = lead + plain[-room:]  # truncate the prompt from the left
        out.append((head + [mask_token_id] * len(tail) + trail,
                    list(range(len(head), len(head) + len(tail))), tail))
    return out


def _framed(tokenizer, text: str) -> tuple[list[int], list[int], list[int]]:
    """(leading special tokens, the text's tokens, trailing special tokens) of ``text``."""
    full = tokenizer(text)["input_ids"]
    plain = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not plain:
        raise ValueError(f"the prompt is empty after tokenization, nothing to condition on: {text!r}")
    for start in range(len(full) - len(plain) + 1):
        if full[start: start + len(plain)] == plain:
            return full[:start], plain, full[start + len(plain):]
    raise ValueError(f"cannot place the mask tokens: the tokenizer's special tokens change the text's tokens "
                     f"({text[:40]!r})")


def _same_row(rows_ids: list[list[int]], mine: list[int], ids: list[int]) -> int:
    """A row of ``mine`` holding exactly ``ids`` (a masked LM attends both ways), or a new row."""
    for r in mine:
        if rows_ids[r] == ids:
            return r
    mine.append(len(rows_ids))
    rows_ids.append(list(ids))
    return mine[-1]


def _row_for(rows_ids: list[list[int]], mine: list[int], context: list[int]) -> int:
    """A row whose first ``len(context)`` tokens are ``context``: one of ``mine`` that starts
    with it, or one that ``context`` extends (the row grows), or a new row."""
    for r in mine:
        have = rows_ids[r]
        n = min(len(have), len(context))
        if have[:n] == context[:n]:
            if len(context) > len(have):
                rows_ids[r] = list(context)
            return r
    mine.append(len(rows_ids))
    rows_ids.append(list(context))
    return mine[-1]


CONTINUED = "_zoft_continued"
"""Set on the model while it runs the second and later length buckets of one evaluation, so
that zoft.train.metering.Meter counts one forward pass per evaluation, not one per bucket."""


def length_buckets(lengths: Sequence[int], min_positions: int, max_waste: float = 0.25) -> list[list[int]]:
    """Rows grouped into padding buckets: sorted by length, longest first, a bucket is padded
    to its first row's length; a bucket is closed once it holds ``min_positions`` padded
    positions (small matmuls run below the machine's peak) and the next row would raise its
    padding above ``max_waste`` of its positions. One bucket when ``min_positions`` covers
    the whole batch."""
    order = sorted(range(len(lengths)), key=lambda r: (-lengths[r], r))
    buckets: list[list[int]] = []
    current: list[int] = []
    used = 0
    for r in order:
        if current:
            width = lengths[current[0]]
            full = width * len(current) >= min_positions
            if full and used + lengths[r] < (1 - max_waste) * width * (len(current) + 1):
                buckets.append(current)
                current, used = [], 0
        current.append(r)
        used += lengths[r]
    return buckets + [current] if current else buckets


def _rows_of(batch: "Batch", rows: list[int]) -> tuple["Batch", torch.Tensor]:
    """The sub-batch of ``rows`` (padded to their longest) and the indices of its scored
    positions in ``batch``."""
    index = torch.tensor(rows, dtype=torch.long, device=batch.input_ids.device)
    width = int(batch.attention_mask[index].sum(1).max())
    local = torch.full((batch.input_ids.shape[0],), -1, dtype=torch.long, device=index.device)
    local[index] = torch.arange(len(rows), device=index.device)
    where = torch.nonzero(local[batch.rows] >= 0)[:, 0]
    sub = Batch(batch.input_ids[index, :width], batch.attention_mask[index, :width], local[batch.rows[where]],
                batch.cols[where], batch.targets[where], batch.cands[where], batch.owners, batch.labels,
                batch.first, batch.sizes)
    return sub, where


@contextmanager
def continued(model: torch.nn.Module, on: bool) -> Iterator[None]:
    setattr(model, CONTINUED, on)
    try:
        yield
    finally:
        setattr(model, CONTINUED, False)


@contextmanager
def scored_positions(model: torch.nn.Module, rows: torch.Tensor, cols: torch.Tensor) -> Iterator[None]:
    """While active, the LM head sees only hidden[rows, cols] (shape (1, N, H)), in this thread
    (``--offload-blocks`` runs the two perturbed forwards in two threads, each with its own)."""
    head = model.get_output_embeddings()
    owner = threading.get_ident()

    def gather(module, args):
        if threading.get_ident() != owner:
            return None
        hidden = args[0]
        return (hidden[rows, cols].unsqueeze(0), *args[1:])

    handle = head.register_forward_pre_hook(gather)
    try:
        yield
    finally:
        handle.remove()


OBJECTIVES = ("loss", "accuracy", "f1")
"""Built-in things ZO can minimise: the candidates' cross-entropy, 1 - accuracy, or 1 - macro F1
of the batch's predictions; ``python:MODULE:FUNCTION`` names a user's own. A metric need not
be differentiable: only zeroth-order optimizers can train on it."""


def error_rate(preds: Sequence[int], labels: Sequence[int]) -> float:
    return sum(p != y for p, y in zip(preds, labels)) / len(labels)


def one_minus_f1(preds: Sequence[int], labels: Sequence[int]) -> float:
    """1 - the macro F1 over the classes present in the labels or the predictions."""
    f1s = []
    for c in sorted(set(labels) | set(preds)):
        tp = sum(p == c and y == c for p, y in zip(preds, labels))
        fp = sum(p == c and y != c for p, y in zip(preds, labels))
        fn = sum(p != c and y == c for p, y in zip(preds, labels))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0)
    return 1.0 - sum(f1s) / len(f1s)


def metric_objective(target: str) -> Callable[[Sequence[int], Sequence[int]], float] | None:
    """The function (predictions, labels) -> value to minimise for ``target``; None for the loss.
    ``python:MODULE:FUNCTION`` imports FUNCTION from MODULE (on sys.path or the working folder)."""
    if target == "loss":
        return None
    if target == "accuracy":
        return error_rate
    if target == "f1":
        return one_minus_f1
    if target.startswith("python:"):
        parts = target.split(":")
        if len(parts) != 3 or not all(parts[1:]):
            raise ValueError(f"invalid objective {target!r}; a user objective is python:MODULE:FUNCTION")
        import importlib
        import os
        if os.getcwd() not in sys.path:
            sys.path.append(os.getcwd())
        try:
            fn = getattr(importlib.import_module(parts[1]), parts[2])
        except (ImportError, AttributeError) as err:
            raise ValueError(f"objective {target!r}: cannot import {parts[2]} from {parts[1]} ({err})") from None
        if not callable(fn):
            raise ValueError(f"objective {target!r}: {parts[1]}.{parts[2]} is not a function")
        return fn
    raise ValueError(f"invalid objective {target!r}; allowed: {', '.join(OBJECTIVES)} or python:MODULE:FUNCTION")


class Objective:
    """Loss and predictions of one task on one model (``offset``: prompt-tuning tokens)."""

    def __init__(self, model: torch.nn.Module, generation: bool = False, offset: int = 0,
                 autocast: torch.dtype | None = None, bucket_positions: int = 0, target: str = "loss") -> None:
        self.metric = metric_objective(target)  # None: the cross-entropy
        if self.metric is not None and generation:
            raise ValueError(f"objective {target!r} is for classification and multiple choice; "
                             "a generation task trains on its loss")
        self.target = target
        self.model = model
        self.autocast = autocast  # matmuls in this dtype over fp32 weights (dtype amp-bf16)
        self.bucket_positions = bucket_positions  # length buckets of >= this many positions (0: off)
        self.runner = model  # what is called: the model, or a DistributedDataParallel around it
        self.generation = generation
        self.offset = offset

    def token_logprobs(self, batch: Batch, module: torch.nn.Module | None = None) -> torch.Tensor:
        """(N,) log p(target) at every scored position, computed in float32. ``module``: what
        to call (default: the runner; evaluation calls the bare model, since a
        DistributedDataParallel forward is a collective that every rank must join).

        With ``bucket_positions`` the rows run in length buckets (:func:`length_buckets`), each
        padded to its own longest row instead of the batch's: the same log-probs (rows are
        independent under the causal mask) for fewer padded positions. A DistributedDataParallel
        runner is called once per backward, so it gets the whole batch."""
        runner = module or self.runner
        rows = batch.input_ids.shape[0]
        if not self.bucket_positions or isinstance(runner, torch.nn.parallel.DistributedDataParallel) or rows < 2:
            return self._logprobs(batch, runner)
        buckets = length_buckets(batch.attention_mask.sum(1).tolist(), self.bucket_positions)
        if len(buckets) == 1:
            return self._logprobs(batch, runner)
        out = torch.empty(batch.targets.shape[0], dtype=torch.float32, device=batch.targets.device)
        for i, bucket in enumerate(buckets):
            sub, where = _rows_of(batch, bucket)
            with continued(self.model, i > 0):
                out[where] = self._logprobs(sub, runner)
        return out

    def _logprobs(self, batch: Batch, runner: torch.nn.Module) -> torch.Tensor:
        with scored_positions(self.model, batch.rows, batch.cols + self.offset), self.compute():
            logits = runner(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                            use_cache=False).logits[0]
        logp = torch.log_softmax(logits.float(), dim=-1)
        return logp.gather(1, batch.targets[:, None])[:, 0]

    def compute(self):
        """The forward's autocast context (a no-op unless ``autocast`` is set)."""
        if self.autocast is None:
            return nullcontext()
        return torch.autocast(next(self.model.parameters()).device.type, dtype=self.autocast)

    def sequence_scores(self, batch: Batch, module: torch.nn.Module | None = None) -> torch.Tensor:
        """(C,) mean log-prob of each candidate's tokens (length-normalised)."""
        lp = self.token_logprobs(batch, module)
        n_cand = batch.owners.shape[0]
        total = torch.zeros(n_cand, dtype=lp.dtype, device=lp.device).index_add_(0, batch.cands, lp)
        return total / torch.bincount(batch.cands, minlength=n_cand).to(lp.dtype)

    def count(self, batch: Batch) -> int:
        """What the loss averages over: examples (classification) or answer tokens (generation)."""
        return len(batch.targets) if self.generation else len(batch.first)

    def loss_sum(self, batch: Batch) -> torch.Tensor:
        """The sum of the per-example (per-token for generation) losses; divided by
        :meth:`count` it is the loss. Summed over data-parallel shards, it gives the loss of the
        whole batch."""
        if self.generation:
            return -self.token_logprobs(batch).sum()
        scores = self.sequence_scores(batch)
        if self.metric is not None:  # a piecewise-constant f: the metric of the batch's predictions
            preds = [int(scores[f: f + n].argmax()) for f, n in zip(batch.first.tolist(), batch.sizes.tolist())]
            value = float(self.metric(preds, [int(y) for y in batch.labels]))
            if not math.isfinite(value):
                raise NonFiniteLossError(f"objective {self.target} returned {value}; no update was made")
            return torch.tensor(value * len(preds), dtype=torch.float64)  # a sum, as the loss's is
        return _candidate_loss_sum(scores, batch)

    def loss(self, batch: Batch) -> torch.Tensor:
        return self.loss_sum(batch) / self.count(batch)

    @torch.no_grad()
    def predict(self, batch: Batch) -> tuple[list[int], float]:
        """The highest-scoring candidate of each example, and the loss sum of the batch (the
        training loss on these examples, from the same forward pass)."""
        scores = self.sequence_scores(batch, self.model)
        preds = [int(scores[f: f + n].argmax()) for f, n in zip(batch.first.tolist(), batch.sizes.tolist())]
        return preds, float(_candidate_loss_sum(scores, batch))


def _candidate_loss_sum(scores: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Sum over examples of the cross-entropy of the gold candidate among its candidates' scores."""
    losses = [torch.nn.functional.cross_entropy(scores[f: f + n][None], y[None])
              for f, n, y in zip(batch.first.tolist(), batch.sizes.tolist(), batch.labels)]
    return torch.stack(losses).sum()


@torch.no_grad()
def greedy_answers(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 32,
                   max_length: int = 256) -> list[str]:
    """Greedy decoding (MeZO's generation evaluation), one prompt at a time, cut at a newline."""
    device = next(model.parameters()).device
    answers = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"][:, -(max_length - max_new_tokens):]
        out = model.generate(input_ids=ids.to(device), attention_mask=torch.ones_like(ids).to(device),
                             max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
        text = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        answers.append(text.split("\n")[0].strip())
    return answers
