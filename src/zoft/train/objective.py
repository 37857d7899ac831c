"""Model + examples -> loss closures and predictions (MeZO's classification mode).

Every example becomes one sequence per candidate: prompt tokens + candidate tokens. A
candidate's score is its length-normalised log-likelihood (mean log-prob of its tokens);
the training loss is the cross-entropy over the candidates' scores (classification), or the
mean token NLL of the gold answer (generation). Logits are computed only at the scored
positions: a pre-hook on the output embedding gathers those hidden states before the LM head,
so a 49k-word vocabulary is projected for a few tokens per sequence, not for all of them.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from zoft.tasks import Example


@dataclass
class Batch:
    """Padded candidate sequences and where they are scored.

    input_ids, attention_mask: (S, T) for S candidate sequences.
    rows, cols, targets: (N,) scored positions: logits at (rows, cols) predict targets
    (rows is also the sequence each scored position belongs to).
    owners: (S,) the example each sequence belongs to; labels: (E,) gold index per example
    (-1 if none); first: (E,) index of each example's first sequence; sizes: candidates each.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    rows: torch.Tensor
    cols: torch.Tensor
    targets: torch.Tensor
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
        out.append((head + tail, len(tail)))
    return out


def collate(tokenizer, examples: Sequence[Example], max_length: int = 256,
            generation: bool = False) -> Batch:
    seqs, owners, first, sizes = [], [], [], []
    for e, ex in enumerate(examples):
        cands = _sequences(tokenizer, ex, max_length, generation)
        first.append(len(seqs))
        sizes.append(len(cands))
        seqs += cands
        owners += [e] * len(cands)
    width = max(len(ids) for ids, _ in seqs)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    rows, cols, targets = [], [], []
    for s, (ids, n_tail) in enumerate(seqs):
        input_ids[s, : len(ids)] = torch.tensor(ids)
        mask[s, : len(ids)] = 1
        start = len(ids) - n_tail
        rows += [s] * n_tail
        cols += range(start - 1, len(ids) - 1)
        targets += ids[start:]
    labels = [ex.label if ex.label is not None else -1 for ex in examples]
    t = lambda xs: torch.tensor(xs, dtype=torch.long)
    return Batch(input_ids, mask, t(rows), t(cols), t(targets), t(owners), t(labels), t(first), t(sizes))


@contextmanager
def scored_positions(model: torch.nn.Module, rows: torch.Tensor, cols: torch.Tensor) -> Iterator[None]:
    """While active, the LM head sees only hidden[rows, cols] (shape (1, N, H))."""
    head = model.get_output_embeddings()

    def gather(module, args):
        hidden = args[0]
        return (hidden[rows, cols].unsqueeze(0), *args[1:])

    handle = head.register_forward_pre_hook(gather)
    try:
        yield
    finally:
        handle.remove()


class Objective:
    """Loss and predictions of one task on one model (``offset``: prompt-tuning tokens)."""

    def __init__(self, model: torch.nn.Module, generation: bool = False, offset: int = 0) -> None:
        self.model = model
        self.runner = model  # what is called: the model, or a DistributedDataParallel around it
        self.generation = generation
        self.offset = offset

    def token_logprobs(self, batch: Batch, module: torch.nn.Module | None = None) -> torch.Tensor:
        """(N,) log p(target) at every scored position, computed in float32. ``module``: what
        to call (default: the runner; evaluation calls the bare model, since a
        DistributedDataParallel forward is a collective that every rank must join)."""
        with scored_positions(self.model, batch.rows, batch.cols + self.offset):
            logits = (module or self.runner)(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                use_cache=False).logits[0]
        logp = torch.log_softmax(logits.float(), dim=-1)
        return logp.gather(1, batch.targets[:, None])[:, 0]

    def sequence_scores(self, batch: Batch, module: torch.nn.Module | None = None) -> torch.Tensor:
        """(S,) mean log-prob of each candidate's tokens (length-normalised)."""
        lp = self.token_logprobs(batch, module)
        n_seq = batch.input_ids.shape[0]
        total = torch.zeros(n_seq, dtype=lp.dtype, device=lp.device).index_add_(0, batch.rows, lp)
        return total / torch.bincount(batch.rows, minlength=n_seq).to(lp.dtype)

    def count(self, batch: Batch) -> int:
        """What the loss averages over: examples (classification) or answer tokens (generation)."""
        return len(batch.targets) if self.generation else len(batch.first)

    def loss_sum(self, batch: Batch) -> torch.Tensor:
        """The sum of the per-example (per-token for generation) losses; divided by
        :meth:`count` it is the loss. Summed over data-parallel shards, it gives the loss of the
        whole batch."""
        if self.generation:
            return -self.token_logprobs(batch).sum()
        return _candidate_loss_sum(self.sequence_scores(batch), batch)

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
