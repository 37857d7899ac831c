"""What a task is: a template turning a raw record into an Example, and a metric.

MeZO / ZO-Bench protocol (Malladi et al. 2023; Zhang et al. 2024): classification and
multiple choice are scored by the length-normalised log-likelihood of each candidate
continuation; generation tasks (SQuAD, DROP) by greedy decoding with F1 / exact match.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence


@dataclass(frozen=True)
class Example:
    """One scored unit.

    prompt:     the text the model reads; the answer continues it directly.
    candidates: classification / multiple choice: the continuations to score (each carries its
                own leading space, e.g. " great"); empty for generation tasks.
    label:      index of the gold candidate (None when unlabelled).
    answers:    generation tasks (and ReCoRD): the gold answer strings; answers[0] is the
                training target of a generation task.
    group:      id of the question an example belongs to when one question yields several
                examples (MultiRC answers), for grouped metrics; else None.
    """

    prompt: str
    candidates: tuple[str, ...] = ()
    label: int | None = None
    answers: tuple[str, ...] = ()
    group: int | None = None


class Task:
    """Base class of a task: one small subclass per task under zoft/tasks/.

    Subclasses set the class attributes and implement ``records`` and ``example``.
    """

    name: str
    kind: Literal["classification", "generation"] = "classification"
    metric_name: str = "accuracy"
    hub: tuple[str, str | None] = ("", None)  # (datasets hub id, config) for the hub fallback
    local_dir: str = ""                       # folder name in the official layout (e.g. "SST-2")

    def records(self, split: Literal["train", "validation", "test"], folder: Path) -> list[dict]:
        """Raw records of ``split`` read from the official file layout under ``folder``.

        Raises FileNotFoundError when the split is absent, ValueError (naming file and line)
        when a file is malformed, empty or truncated.
        """
        raise NotImplementedError

    def example(self, record: dict) -> Example | list[Example]:
        raise NotImplementedError

    def score(self, examples: Sequence[Example], predictions: Sequence) -> dict[str, float]:
        """Metrics; predictions are candidate indices (classification) or strings (generation).

        The first key is ``metric_name``.
        """
        raise NotImplementedError
