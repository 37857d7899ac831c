"""Users' own data: ``--train-file/--dev-file/--test-file`` (JSON Lines, CSV or TSV with a header).

Four shapes, inferred from the columns or set with ``--format``:

- ``classification``: columns ``text`` and ``label``. The prompt is ``--template`` with
  ``{text}`` replaced (default ``"{text}\\nAnswer:"``); each label is scored as a continuation
  from ``--verbalizer "0=terrible,1=great"`` (default: the label values themselves, and
  ``no``/``yes`` for labels 0/1).
- ``choice``: columns ``context``, ``choices`` (a JSON list; in CSV/TSV a JSON list or
  ``a|b|c``) and ``answer`` (the index of the right choice, or its text).
- ``generation``: columns ``prompt`` and ``completion``: the loss is on the completion's tokens
  (the prompt is context only); evaluation decodes greedily and scores F1 / exact match
  against the completion, as the built-in generation tasks do (cut at the first newline).
- ``chat``: a column ``messages``, a list of ``{"role", "content"}`` turns ending with the
  assistant's; the turns before it are rendered with the tokenizer's chat template (with the
  generation prompt) when it has one, else as ``role: content`` lines, and the last turn's
  content is the completion (its end-of-turn marker is not trained).

Classification and choice are scored like the built-in tasks (length-normalised candidate
log-likelihood, accuracy); generation and chat like SQuAD (F1, EM). Splits:
the dev and test files are optional; without them dev (and test) are sampled from the train
file, as zoft.tasks.data does for the benchmark tasks. Every error names the file and line;
a missing column lists the columns found.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Sequence

from zoft.tasks.base import Example, Task
from zoft.tasks.formats import Located, _text, check_records, fail, read_jsonl
from zoft.tasks.metrics import accuracy, f1_em

FORMATS = ("classification", "choice", "generation", "chat")
COLUMNS = {"classification": ("text", "label"), "choice": ("context", "choices", "answer"),
           "generation": ("prompt", "completion"), "chat": ("messages",)}
DEFAULT_TEMPLATE = "{text}\nAnswer:"


def read_table(path: Path) -> Located:
    """(where, record) rows of a .jsonl/.json (one object per line), .csv or .tsv file."""
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist")
    if path.suffix in (".jsonl", ".json"):
        return read_jsonl(path)
    if path.suffix not in (".csv", ".tsv"):
        raise ValueError(f"{path}: unknown data file type {path.suffix!r}; use .jsonl, .csv or .tsv")
    reader = csv.DictReader(io.StringIO(_text(path)), delimiter="\t" if path.suffix == ".tsv" else ",")
    rows = []
    for n, row in enumerate(reader, start=2):  # line 1 is the header
        if None in row:
            raise fail(path, f"line {n}", f"more fields than the header's {len(reader.fieldnames)}")
        rows.append((f"line {n}", dict(row)))
    if not rows:
        raise fail(path, "line 2", "no rows after the header")
    return rows


def continuation(prompt: str, answer: str) -> str:
    """The answer as the prompt's continuation: after a leading space, unless the prompt ends a line."""
    return answer if prompt.endswith(("\n", " ")) else " " + answer


def parse_verbalizer(text: str) -> dict[str, str]:
    """``"0=terrible,1=great"`` -> {"0": " terrible", "1": " great"} (continuations get a leading space)."""
    out = {}
    for part in text.split(","):
        if "=" not in part:
            raise ValueError(f"invalid verbalizer entry {part!r} in {text!r}; expected LABEL=WORD[,LABEL=WORD...]")
        label, word = (s.strip() for s in part.split("=", 1))
        if not label or not word:
            raise ValueError(f"invalid verbalizer entry {part!r} in {text!r}; label and word must be non-empty")
        out[label] = " " + word
    return out


class OwnTask(Task):
    """A task over the user's files (module docstring)."""

    name = "own"
    local_dir = ""

    def __init__(self, train_file: str, dev_file: str | None = None, test_file: str | None = None,
                 format: str | None = None, template: str | None = None, verbalizer: str | None = None,
                 tables: dict[str, Located] | None = None) -> None:
        """``tables``: the splits' rows already read (a hub data set, :func:`hub_task`); then
        ``train_file`` only names the source in messages."""
        given = {"train": train_file, "validation": dev_file, "test": test_file}
        if dev_file is None and test_file is None:
            given = {"validation": train_file}  # one file: train, dev and test are sampled from it
        self.paths = {split: Path(p) for split, p in given.items() if p is not None}
        self.tables = tables
        if tables is not None:
            self.paths = {split: Path(train_file) for split in tables}
            self.name = train_file  # hf:NAME[:CONFIG], so notes and errors name the data set
        first = tables[next(iter(tables))] if tables is not None else read_table(Path(train_file))
        columns = sorted(first[0][1])
        self.format = format or next((f for f, need in COLUMNS.items() if set(need) <= set(columns)), None)
        if self.format not in FORMATS:
            raise ValueError(f"{train_file}: cannot tell the data shape from the columns {columns}"
                             if format is None else f"invalid format {format!r}; allowed: {', '.join(FORMATS)}")
        missing = [c for c in COLUMNS[self.format] if c not in columns]
        if missing:
            raise fail(Path(train_file), "line 1", f"missing column(s) {missing} for {self.format}; "
                       f"columns found: {columns}")
        if self.format in ("generation", "chat"):
            self.kind, self.metric_name = "generation", "f1"
            for flag, value in (("--template", template), ("--verbalizer", verbalizer)):
                if value:
                    raise ValueError(f"{flag} is for classification data; {self.format} data carry their own prompts")
        self.needs_tokenizer = self.format == "chat"  # the chat template renders the prompts
        self.chat_template = None
        self.template = template or DEFAULT_TEMPLATE
        if self.format == "classification" and "{text}" not in self.template:
            raise ValueError(f"invalid template {self.template!r}; it must contain {{text}}")
        if self.format == "classification":
            for where, r in first:
                if "label" not in r or "text" not in r:
                    raise fail(Path(train_file), where, f"missing field(s) {[c for c in ('text', 'label') if c not in r]}; "
                               f"fields found: {sorted(r)}")
            labels = sorted({str(r["label"]) for _, r in first})
            self.words = parse_verbalizer(verbalizer) if verbalizer else self._default_words(labels)
            unknown = [(where, str(r["label"])) for where, r in first if str(r["label"]) not in self.words]
            if unknown:
                raise fail(Path(train_file), unknown[0][0], f"label {unknown[0][1]!r} has no word in the "
                           f"verbalizer {verbalizer!r} (labels in the file: {labels})")
            self.label_values = tuple(self.words)
            self.candidates = tuple(self.words.values())
        elif verbalizer:
            raise ValueError("--verbalizer is for classification data; choice data name their own choices")

    def use_tokenizer(self, tokenizer) -> None:
        """Render chat prompts with ``tokenizer``'s chat template (when it has one)."""
        self.chat_template = tokenizer if getattr(tokenizer, "chat_template", None) else None

    def render(self, turns: list[dict]) -> str:
        """The prompt of a chat: its turns before the assistant's answer, and the answer's cue."""
        if self.chat_template is not None:
            return self.chat_template.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
        return "".join(f"{t['role']}: {t['content']}\n" for t in turns) + "assistant:"

    @staticmethod
    def _default_words(labels: Sequence[str]) -> dict[str, str]:
        if list(labels) == ["0", "1"]:
            return {"0": " no", "1": " yes"}
        return {label: " " + label for label in labels}

    def records(self, split: str, folder: Path) -> list[dict]:
        path = self.paths.get(split)
        if path is None:
            raise FileNotFoundError(split)
        rows = self.tables[split] if self.tables is not None else read_table(path)
        missing = [c for c in COLUMNS[self.format] if c not in rows[0][1]]
        if missing:
            raise fail(path, "line 1", f"missing column(s) {missing} for {self.format}; "
                       f"columns found: {sorted(rows[0][1])}")
        check_records(self, rows, path)
        return [record for _, record in rows]

    def example(self, record: dict) -> Example:
        if self.format == "generation":
            prompt, completion = record["prompt"], record["completion"]
            for name, value in (("prompt", prompt), ("completion", completion)):
                if not isinstance(value, str) or not value.strip():
                    raise ValueError(f"field {name!r} must be a non-empty string, got {value!r}")
            return Example(prompt.rstrip(" "), answers=(continuation(prompt.rstrip(" "), completion.strip()),))
        if self.format == "chat":
            return self._chat_example(record["messages"])
        if self.format == "classification":
            text = record["text"]
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"field 'text' must be a non-empty string, got {text!r}")
            label = str(record["label"])
            if label not in self.label_values:
                raise ValueError(f"label {label!r} is not one of {list(self.label_values)} (--verbalizer)")
            return Example(self.template.replace("{text}", text.strip()), self.candidates,
                           self.label_values.index(label))
        choices = record["choices"]
        if isinstance(choices, str):
            choices = json.loads(choices) if choices.strip().startswith("[") else choices.split("|")
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c.strip() for c in choices):
            raise ValueError(f"field 'choices' must list at least two non-empty strings, got {record['choices']!r}")
        answer = record["answer"]
        if isinstance(answer, str) and answer.strip().lstrip("-").isdigit():
            answer = int(answer)
        if isinstance(answer, int) and not isinstance(answer, bool):
            if not 0 <= answer < len(choices):
                raise ValueError(f"answer {answer} is not an index of the {len(choices)} choices")
            index = answer
        elif isinstance(answer, str) and answer in choices:
            index = choices.index(answer)
        else:
            raise ValueError(f"answer {answer!r} is neither an index nor the text of one of the choices")
        context = record["context"]
        if not isinstance(context, str):
            raise ValueError(f"field 'context' must be a string, got {context!r}")
        return Example(context.rstrip(), tuple(" " + c.strip() for c in choices), index)

    def _chat_example(self, messages: object) -> Example:
        if isinstance(messages, str):
            try:
                messages = json.loads(messages)
            except json.JSONDecodeError:
                raise ValueError(f"field 'messages' is not a JSON list: {messages[:60]!r}") from None
        if not isinstance(messages, list) or len(messages) < 2:
            raise ValueError("field 'messages' must list at least two turns (a user's, then the assistant's)")
        for n, turn in enumerate(messages):
            if not (isinstance(turn, dict) and isinstance(turn.get("role"), str)
                    and isinstance(turn.get("content"), str)):
                raise ValueError(f"turn {n} of 'messages' must be an object with string 'role' and 'content', "
                                 f"got {turn!r}")
        if messages[-1]["role"] != "assistant" or not messages[-1]["content"].strip():
            raise ValueError(f"the last turn of 'messages' must be the assistant's, with content; "
                             f"got role {messages[-1]['role']!r}")
        answer = messages[-1]["content"].strip()
        prompt = self.render(messages[:-1])
        return Example(prompt, answers=(continuation(prompt, answer),))

    def score(self, examples: Sequence[Example], predictions: Sequence) -> dict[str, float]:
        if self.kind == "generation":
            return f1_em([ex.answers for ex in examples], predictions)
        return {"accuracy": accuracy(examples, predictions)}


HUB_SPLITS = {"train": ("train",), "validation": ("validation", "dev", "valid"), "test": ("test",)}


def hub_task(spec: str, format: str | None = None, template: str | None = None,
             verbalizer: str | None = None) -> OwnTask:
    """``hf:NAME[:CONFIG]``: a Hugging Face data set (a hub id, or a local folder of data files
    or one written by ``save_to_disk``) read with ``datasets``, shaped like own data. Its
    train / validation (or dev) / test splits are used where present; the rest are sampled."""
    parts = spec.split(":")
    if parts[0] != "hf" or len(parts) not in (2, 3) or not parts[1]:
        raise ValueError(f"invalid task {spec!r}; a Hugging Face data set is hf:NAME or hf:NAME:CONFIG")
    name, config = parts[1], (parts[2] if len(parts) == 3 and parts[2] else None)
    import datasets

    try:
        if (Path(name) / "dataset_dict.json").exists():
            data = datasets.load_from_disk(name)
        else:
            data = datasets.load_dataset(name, config)
    except (FileNotFoundError, ValueError, ConnectionError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"task {spec!r}: cannot load the data set ({first})") from None
    tables = {}
    for split, names in HUB_SPLITS.items():
        found = next((n for n in names if n in data), None)
        if found is not None and len(data[found]):
            tables[split] = [(f"{found} row {i}", dict(row)) for i, row in enumerate(data[found])]
    if not tables:
        raise ValueError(f"task {spec!r}: no train, validation or test split (splits: {sorted(data)})")
    if "train" not in tables or len(tables) == 1:  # one split: train, dev and test are sampled from it
        tables = {"validation": next(iter(tables.values()))}
    return OwnTask(spec, spec if "validation" in tables else None, spec if "test" in tables else None,
                   format, template, verbalizer, tables=tables)
