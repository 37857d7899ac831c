"""Users' own data from the command line: shapes inferred from the columns, templates and
verbalizers, and one-line errors that name the file, the line and the columns found."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from zoft.cli import main
from zoft.tasks.own import OwnTask

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TINY = ["--model", "tiny-llama", "--steps", "2", "--batch-size", "4", "--dtype", "fp32"]


@pytest.mark.parametrize("name", ["reviews.jsonl", "reviews.csv", "choice.jsonl", "qa.jsonl", "chat.jsonl"])
def test_each_example_file_trains_from_the_cli(tmp_path, name):
    extra = ["--verbalizer", "negative=bad,positive=good"] if name.endswith(".csv") else []
    assert main(["train", *TINY, "--train-file", str(EXAMPLES / name), *extra, "--out", str(tmp_path / "r")]) == 0
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["task"] == "own" and summary["test_metric"] is not None


def test_classification_template_and_verbalizer_make_the_scored_text():
    task = OwnTask(str(EXAMPLES / "reviews.csv"), template="Review: {text} It was",
                   verbalizer="negative=bad,positive=good")
    ex = task.example({"text": " Great fun. ", "label": "positive"})
    assert task.format == "classification"
    assert ex.prompt == "Review: Great fun. It was" and ex.candidates == (" bad", " good") and ex.label == 1
    default = OwnTask(str(EXAMPLES / "reviews.jsonl"))
    assert default.example({"text": "x", "label": 0}).candidates == (" no", " yes")


def test_choice_answers_by_index_or_text():
    task = OwnTask(str(EXAMPLES / "choice.jsonl"))
    assert task.format == "choice"
    by_text = task.example({"context": "Q?", "choices": ["a", "b"], "answer": "b"})
    by_index = task.example({"context": "Q?", "choices": "a|b", "answer": "1"})
    assert by_text == by_index and by_text.candidates == (" a", " b") and by_text.label == 1


def test_generation_data_train_on_the_completion_and_score_f1():
    task = OwnTask(str(EXAMPLES / "qa.jsonl"))
    assert (task.format, task.kind, task.metric_name) == ("generation", "generation", "f1")
    ex = task.example({"prompt": "Q: 2+2?\nA:", "completion": " 4 "})
    assert ex.prompt == "Q: 2+2?\nA:" and ex.answers == (" 4",) and ex.candidates == ()
    assert task.example({"prompt": "Q: 2+2?\n", "completion": "4"}).answers == ("4",)  # no space after a newline
    assert task.score([ex, ex], ["4", "five"]) == {"f1": 0.5, "em": 0.5}


def test_chat_data_use_the_tokenizer_chat_template():
    from zoft.models import byte_tokenizer

    task = OwnTask(str(EXAMPLES / "chat.jsonl"))
    assert task.format == "chat" and task.needs_tokenizer
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " hello "}]
    plain = task.example({"messages": turns})  # no tokenizer yet: role: content lines
    assert plain.prompt == "user: hi\nassistant:" and plain.answers == (" hello",)
    tokenizer = byte_tokenizer()
    tokenizer.chat_template = ("{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}"
                               "{% if add_generation_prompt %}<assistant>\n{% endif %}")
    task.use_tokenizer(tokenizer)
    ex = task.example({"messages": json.dumps(turns)})  # CSV cells hold the list as JSON text
    assert ex.prompt == "<user>hi\n<assistant>\n" and ex.answers == ("hello",)


@pytest.mark.parametrize("messages, message", [
    ([{"role": "user", "content": "hi"}], "at least two turns"),
    ([{"role": "user", "content": "hi"}, {"role": "user", "content": "again"}], "last turn of 'messages' must be the assistant's"),
    ([{"role": "user"}, {"role": "assistant", "content": "x"}], "turn 0 of 'messages'"),
    ("[not json", "not a JSON list"),
])
def test_bad_chat_rows_are_named(messages, message):
    with pytest.raises(ValueError, match=message):
        OwnTask(str(EXAMPLES / "chat.jsonl")).example({"messages": messages})


def test_template_is_refused_for_generation_data(tmp_path, capsys):
    code = main(["train", *TINY, "--train-file", str(EXAMPLES / "qa.jsonl"), "--template", "{text}",
                 "--out", str(tmp_path / "r")])
    assert code == 2 and "--template is for classification data; generation data carry their own prompts" \
        in capsys.readouterr().err


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("content, name, message", [
    ('{"sentence": "a", "y": 1}\n', "d.jsonl", "columns ['sentence', 'y']"),
    ('{"text": "a", "label": 1}\n{"text": "b", "label": 7}\n', "d.jsonl", "line 2"),
    ('{"text": "a", "label": 1}\n{"text": "b"\n', "d.jsonl", "line 2: invalid JSON"),
    ("text,label\na,1\nb,2,extra\n", "d.csv", "line 3: more fields than the header"),
    ("text\tlabel\n", "d.tsv", "no rows after the header"),
    ('{"context": "c", "choices": ["x", "y"], "answer": 5}\n', "d.jsonl", "answer 5 is not an index"),
    ("a,b\n", "d.txt", "unknown data file type '.txt'"),
])
def test_a_bad_data_file_is_one_line_naming_it(tmp_path, capsys, content, name, message):
    path = write(tmp_path / name, content)
    extra = ["--verbalizer", "0=no,1=yes"] if "label\": 7" in content else []
    code = main(["train", *TINY, "--train-file", str(path), *extra, "--out", str(tmp_path / "r")])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("zoft: error:")]
    assert code == 2 and len(errors) == 1 and message in errors[0] and name in errors[0], errors


def test_train_file_goes_with_task_own(tmp_path, capsys):
    code = main(["train", *TINY, "--task", "sst2", "--train-file", str(EXAMPLES / "reviews.jsonl"),
                 "--out", str(tmp_path / "r")])
    assert code == 2 and "--task own goes with --train-file" in capsys.readouterr().err


def test_a_row_without_a_label_is_named(tmp_path, capsys):
    path = write(tmp_path / "d.jsonl", '{"text": "a", "label": 1}\n{"text": "b"}\n')
    assert main(["train", *TINY, "--train-file", str(path), "--out", str(tmp_path / "r")]) == 2
    assert "line 2: missing field(s) ['label']" in capsys.readouterr().err


def test_hf_task_reads_a_local_datasets_folder(tmp_path):
    """--task hf:NAME goes through datasets.load_dataset (a hub id for users; a local folder here)."""
    folder = tmp_path / "ds"
    folder.mkdir()
    rows = [json.loads(line) for line in (EXAMPLES / "reviews.jsonl").read_text().splitlines() if line]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:8]))
    (folder / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[8:]))
    assert main(["train", *TINY, "--task", f"hf:{folder}", "--out", str(tmp_path / "r")]) == 0
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["task"] == f"hf:{folder}"

    import datasets

    from zoft.tasks.own import hub_task
    saved = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(saved))
    task = hub_task(f"hf:{saved}")
    assert task.format == "classification" and len(task.records("validation", Path())) == len(rows)


@pytest.mark.parametrize("spec, message", [
    ("hf:", "a Hugging Face data set is hf:NAME or hf:NAME:CONFIG"),
    ("hf:/no/such/folder/zoft", "cannot load the data set"),
])
def test_bad_hf_tasks_are_one_line_errors(spec, message):
    from zoft.tasks.own import hub_task

    with pytest.raises(ValueError, match=message):
        hub_task(spec)
