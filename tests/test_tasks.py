"""Task conformance table: adding a task is adding one row to ROWS (offline, hand-written data).

Each row holds records written in the task's official file format, the same record in the
Hugging Face hub shape, and the Example that both must produce (MeZO's templates).
"""

from __future__ import annotations

import json
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import pytest

from zoft.tasks import TASK_NAMES, TASKS, DataUnavailableError, Example, get_task, load_splits
from zoft.tasks.metrics import exact_match, multirc_scores, normalize_answer, token_f1


def jsonl(*records: dict) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


@dataclass
class Row:
    files: dict[str, str]  # path under the task folder -> text in the official format
    split: str             # split whose first record is checked
    expected: Example      # the first example of that split
    hub: dict | None       # the same record as a Hugging Face row


PREMISE, HYPO = "The kettle was still warm.", "Someone had boiled water recently."
CONTEXT = "The lighthouse was painted red in 1921 by the harbour board."
WSC_TEXT = "Tom thanked Ben because he had helped."
WSC_SPANS = {"span1_text": "Ben", "span1_index": 2, "span2_text": "He", "span2_index": 4}
COPA = {"premise": "I left the milk out overnight.", "choice1": "It went sour.",
        "choice2": "I bought more.", "question": "effect", "label": 0, "idx": 0}
WINO = {"sentence": "The vase fell off the shelf because the _ was tilted.", "option1": "vase",
        "option2": "shelf", "answer": "2"}
WIC = {"word": "bank", "sentence1": "We sat on the river bank.", "sentence2": "The bank closed early."}
MRC_QUESTION = {"question": "Who painted it?", "idx": 7, "answers": [
    {"text": "the harbour board", "idx": 0, "label": 1}, {"text": "", "idx": 1, "label": 0}]}
REC_PASSAGE = "Ada Lovelace met Charles Babbage in London.\n@highlight\nBabbage built engines"
REC_NAMES = ["Ada Lovelace", "Charles Babbage", "London", "Babbage"]
REC_SPANS = [{"start": 0, "end": 11}, {"start": 17, "end": 31}, {"start": 36, "end": 41},
             {"start": 55, "end": 61}]  # end inclusive, as in the official files
REC_QUERY = "@placeholder designed the difference engine."
REC_GOLD = [{"start": 17, "end": 31, "text": "Charles Babbage"}, {"start": 55, "end": 61, "text": "Babbage"}]
SQUAD_QA = {"id": "a1", "question": "When was it painted? ",
            "answers": [{"text": "1921", "answer_start": 34}, {"text": "in 1921", "answer_start": 31}]}
SQUAD = {"version": "1.1",
         "data": [{"title": "Lighthouse", "paragraphs": [{"context": CONTEXT, "qas": [SQUAD_QA]}]}]}
NO_DATE = {"day": "", "month": "", "year": ""}
DROP_QA = {"question": "How many years ago?", "query_id": "q1",
           "answer": {"number": "", "date": NO_DATE, "spans": ["1921"]},
           "validated_answers": [{"number": "1921", "date": {}, "spans": []}]}

ROWS = {
    "sst2": Row(
        {"train.tsv": "sentence\tlabel\na warm , funny film \t1\nflat and dull \t0\n"}, "train",
        Example("a warm , funny film It was", (" terrible", " great"), 1),
        {"sentence": "a warm , funny film ", "label": 1, "idx": 0}),
    "sentiment-demo": Row({}, "train", None, None),  # built in: see test_sentiment_demo_*
    "copa": Row(
        {"train.jsonl": jsonl(COPA)}, "train",
        Example("I left the milk out overnight so", (" it went sour.", " I bought more."), 0), COPA),
    "winogrande": Row(
        {"dev.jsonl": jsonl({"qID": "q-1", **WINO}), "dev-labels.lst": "2\n"}, "validation",
        Example("The vase fell off the shelf because the", (" vase was tilted.", " shelf was tilted."), 1),
        WINO),
    "cb": Row(
        {"val.jsonl": jsonl({"premise": PREMISE, "hypothesis": HYPO, "label": "neutral", "idx": 0})},
        "validation",
        Example(f'Suppose {PREMISE} Can we infer that "{HYPO}"? Yes, No, or Maybe?\n',
                ("Yes", "No", "Maybe"), 2),
        {"premise": PREMISE, "hypothesis": HYPO, "label": 2, "idx": 0}),
    "rte": Row(
        {"train.jsonl": jsonl({"premise": PREMISE, "hypothesis": HYPO, "label": "not_entailment"})}, "train",
        Example(f'{PREMISE}\nDoes this mean that "{HYPO}" is true? Yes or No?\n', ("Yes", "No"), 1),
        {"premise": PREMISE, "hypothesis": HYPO, "label": 1, "idx": 0}),
    "wsc": Row(
        {"train.jsonl": jsonl({"text": WSC_TEXT, "target": WSC_SPANS, "idx": 0, "label": True})}, "train",
        Example(f'{WSC_TEXT}\nIn the previous sentence, does the pronoun "he" refer to Ben? Yes or No?\n',
                ("No", "Yes"), 1),
        {"text": WSC_TEXT, **WSC_SPANS, "idx": 0, "label": 1}),
    "boolq": Row(
        {"val.jsonl": jsonl({"question": "is the lighthouse red", "passage": CONTEXT, "label": False})},
        "validation", Example(f"{CONTEXT} Is the lighthouse red?\n", ("Yes", "No"), 1),
        {"question": "is the lighthouse red", "passage": CONTEXT, "idx": 0, "label": 0}),
    "wic": Row(
        {"val.jsonl": jsonl({**WIC, "label": False, "idx": 0})}, "validation",
        Example('Does the word "bank" have the same meaning in these two sentences? Yes, No?\n'
                "We sat on the river bank.\nThe bank closed early.\n", ("No", "Yes"), 0),
        {**WIC, "idx": 0, "label": 0}),
    "multirc": Row(
        {"val.jsonl": jsonl({"idx": 0, "passage": {"text": CONTEXT, "questions": [MRC_QUESTION]}})},
        "validation",
        Example(f'{CONTEXT}\nQuestion: Who painted it?\nI found this answer "the harbour board". '
                "Is that correct? Yes or No?\n", ("No", "Yes"), 1, group=7),
        {"paragraph": CONTEXT, "question": "Who painted it?", "answer": "the harbour board",
         "idx": {"paragraph": 0, "question": 7, "answer": 0}, "label": 1}),
    "record": Row(
        {"fewglue32/train.jsonl": jsonl({"idx": 0, "passage": {"text": REC_PASSAGE, "entities": REC_SPANS},
                                         "qas": [{"query": REC_QUERY, "idx": 3, "answers": REC_GOLD}]})},
        "train",
        Example(f'{REC_PASSAGE}\n{REC_QUERY}\nQuestion: what is the "@placeholder"\nAnswer:',
                tuple(" " + e for e in REC_NAMES), 1, ("Charles Babbage", "Babbage")),
        {"passage": REC_PASSAGE, "query": REC_QUERY, "entities": REC_NAMES,
         "answers": ["Charles Babbage", "Babbage"], "idx": {"passage": 0, "query": 3}}),
    "squad": Row(
        {"dev-v1.1.json": json.dumps(SQUAD, indent=1)}, "validation",
        Example(f"Title: Lighthouse\nContext: {CONTEXT}\nQuestion: When was it painted?\nAnswer:",
                answers=(" 1921", " in 1921")),
        {"id": "a1", "title": "Lighthouse", "context": CONTEXT, "question": "When was it painted? ",
         "answers": {"text": ["1921", "in 1921"], "answer_start": [34, 31]}}),
    "drop": Row(
        {"drop_dataset_train.json": json.dumps({"p1": {"passage": CONTEXT, "qa_pairs": [DROP_QA]}}, indent=1)},
        "train",
        Example(f"Passage: {CONTEXT}\nQuestion: How many years ago?\nAnswer:", answers=(" 1921",)),
        {"section_id": "p1", "query_id": "q1", "passage": CONTEXT, "question": "How many years ago?",
         "answers_spans": {"spans": ["1921", "1921"], "types": ["span", "number"]}}),
}
NAMES = sorted(n for n in ROWS if n != "sentiment-demo")


def write_files(tmp_path: Path, name: str, files: dict[str, str]) -> Path:
    folder = tmp_path / get_task(name).local_dir
    for rel, text in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text, encoding="utf-8")
    return folder


def first_example(name: str, records: list[dict]) -> Example:
    made = get_task(name).example(records[0])
    return made[0] if isinstance(made, list) else made


def test_table_covers_every_registered_task():
    assert sorted(ROWS) == TASK_NAMES == TASKS.names()


def test_unknown_task_lists_the_valid_names():
    with pytest.raises(ValueError, match="unknown task 'sst3'; choose one of: boolq, cb, copa"):
        get_task("sst3")


@pytest.mark.parametrize("name", NAMES)
def test_official_record_gives_the_template(tmp_path, name):
    row = ROWS[name]
    records = get_task(name).records(row.split, write_files(tmp_path, name, row.files))
    assert first_example(name, records) == row.expected


@pytest.mark.parametrize("name", NAMES)
def test_hub_row_gives_the_same_example(name):
    row = ROWS[name]
    assert first_example(name, get_task(name).from_hub([dict(row.hub)])) == row.expected


@pytest.mark.parametrize("name", NAMES)
def test_metric_is_one_when_right_and_zero_when_wrong(name):
    task, ex = get_task(name), ROWS[name].expected
    if task.kind == "generation":
        right, wrong = [ex.answers[0]], ["no idea"]
    else:
        right = [ex.label]
        wrong = [next(i for i, c in enumerate(ex.candidates)
                      if i != ex.label and c.strip() not in ex.answers)]
    good, bad = task.score([ex], right), task.score([ex], wrong)
    assert next(iter(good)) == task.metric_name
    assert all(v == 1.0 for v in good.values()) and all(v == 0.0 for v in bad.values()), (good, bad)


@pytest.mark.parametrize("name", NAMES)
def test_score_rejects_mismatched_or_invalid_predictions(name):
    task, ex = get_task(name), ROWS[name].expected
    with pytest.raises(ValueError, match="got 2 predictions for 1 examples"):
        task.score([ex], [0, 0] if task.kind != "generation" else ["a", "b"])
    with pytest.raises(ValueError, match="invalid prediction"):
        task.score([ex], [None])


@pytest.mark.parametrize("prediction, gold, em, f1", [
    ("Denver Broncos", "denver broncos", 1.0, 1.0),
    ("the Broncos!", "Broncos", 1.0, 1.0),
    ("  a   cat. ", "The cat", 1.0, 1.0),
    ("Denver", "Denver Broncos", 0.0, 2 / 3),
    ("Denver Broncos won", "Denver Broncos", 0.0, 0.8),
    ("Panthers", "Denver Broncos", 0.0, 0.0),
    ("", "", 1.0, 1.0),
    ("the", "a", 1.0, 1.0),  # both normalise to nothing
])
def test_squad_normalisation_em_and_f1(prediction, gold, em, f1):
    assert exact_match(prediction, gold) == em
    assert token_f1(prediction, gold) == pytest.approx(f1)


def test_normalize_answer_matches_squad_script():
    assert normalize_answer("The  Quick, brown-fox!") == "quick brownfox"


def test_generation_score_takes_the_best_gold():
    squad = get_task("squad")
    ex = Example("Q?\nAnswer:", answers=(" in 1921", " 1921"))
    assert squad.score([ex], ["1921"]) == {"f1": 1.0, "em": 1.0}


def test_multirc_f1a_and_em_by_question():
    ex = [Example("p", ("No", "Yes"), label, group=g) for label, g in [(1, 0), (0, 0), (1, 1), (1, 1)]]
    scores = multirc_scores(ex, [1, 0, 1, 0])  # question 0 right, question 1 half right
    assert scores == {"accuracy": 0.75, "f1a": pytest.approx(0.8), "em": 0.5}


def test_sentiment_demo_loads_offline_with_balanced_splits(monkeypatch):
    monkeypatch.delenv("ZOFT_DATA_DIR", raising=False)
    splits = load_splits("sentiment-demo", train_size=200, dev_size=50, test_size=50)
    assert [len(s) for s in (splits.train, splits.dev, splits.test)] == [200, 50, 50]
    assert splits.notes == []
    for part in (splits.train, splits.dev, splits.test):
        assert sum(ex.label for ex in part) * 2 == len(part)
        assert all(ex.prompt.endswith(" It was") and ex.candidates == (" terrible", " great") for ex in part)
    prompts = [ex.prompt for ex in splits.train + splits.dev + splits.test]
    assert len(set(prompts)) == 300


WINO_FILES = {"dev.jsonl": jsonl(*[{"sentence": "A _ b.", "option1": "x", "option2": "y", "answer": a}
                                   for a in "12"]), "dev-labels.lst": "1\n2\n"}
BAD_FILES = [  # (task, split, files written (official layout), expected "<file>, <line>: <message>")
    ("sst2", "train", {"train.tsv": "text\tlabel\nfine film\t1\n"}, r"train.tsv, line 1: header \['text'"),
    ("sst2", "train", {"train.tsv": "sentence\tlabel\nfine film\t1\nawful\t2\n"},
     "train.tsv, line 3: invalid label '2'"),
    ("sst2", "train", {"train.tsv": "sentence\tlabel\nfine\tfilm\t1\n"},
     "train.tsv, line 2: expected 2 tab-separated fields"),
    ("sst2", "train", {"train.tsv": ""}, "train.tsv, line 1: file is empty"),
    ("copa", "train", {"train.jsonl": jsonl(ROWS["copa"].hub) + '{"premise": "I left'},
     "train.jsonl, line 2: invalid JSON"),
    ("copa", "train", {"train.jsonl": jsonl({**ROWS["copa"].hub, "question": "reason"})},
     "train.jsonl, line 1: invalid question 'reason'"),
    ("cb", "validation", {"val.jsonl": jsonl({"premise": PREMISE, "hypothesis": HYPO, "label": "maybe"})},
     "val.jsonl, line 1: invalid label 'maybe'"),
    ("rte", "train", {"train.jsonl": jsonl({"premise": PREMISE, "label": "entailment"})},
     "train.jsonl, line 1: missing field 'hypothesis'"),
    ("rte", "train", {"train.jsonl": jsonl({"premise": PREMISE, "hypothesis": HYPO, "label": "entailment"},
                                           {"premise": PREMISE, "hypothesis": HYPO})},
     "train.jsonl, line 2: record has no label"),
    ("boolq", "validation", {"val.jsonl": jsonl({"question": "is it", "passage": "p", "label": "true"})},
     "val.jsonl, line 1: invalid label 'true'"),
    ("wsc", "train", {"train.jsonl": jsonl({"text": "t", "target": "Ben", "label": True})},
     "train.jsonl, line 1: malformed record"),
    ("winogrande", "validation", {**WINO_FILES, "dev-labels.lst": "1\n"},
     "dev-labels.lst, line 2: has 1 labels but dev.jsonl has 2 rows"),
    ("winogrande", "validation", {**WINO_FILES, "dev-labels.lst": "1\n1\n"},
     "dev-labels.lst, line 2: label '1' disagrees"),
    ("winogrande", "validation", {**WINO_FILES, "dev-labels.lst": "1\n3\n"},
     "dev-labels.lst, line 2: invalid label '3'"),
    ("winogrande", "test", {"test.jsonl": jsonl({"sentence": "no blank", "option1": "x", "option2": "y"})},
     "test.jsonl, line 1: sentence must contain exactly one blank"),
    ("multirc", "validation", {"val.jsonl": jsonl({"passage": {"text": "p", "questions": [
        {"question": "q", "idx": 0, "answers": [{"text": "a", "idx": 0, "label": 2}]}]}})},
     "val.jsonl, line 1: invalid label 2"),
    ("record", "train", {"fewglue32/train.jsonl": jsonl({"passage": {"text": "Ada met Bob.", "entities": [
        {"start": 0, "end": 2}]}, "qas": [{"query": "@placeholder smiled.", "answers": [{"text": "Bob"}]}]})},
     "train.jsonl, line 1: no gold answer"),
    ("squad", "validation", {"dev-v1.1.json": '{"data": [\n{"title": "x",\n'},
     "dev-v1.1.json, line 3: invalid JSON"),
    ("squad", "validation", {"dev-v1.1.json": json.dumps({"data": [{"title": "x", "paragraphs": [{
        "context": "c", "qas": [{"question": "q?", "answers": [{"text": 3}]}]}]}]})},
     r"dev-v1.1.json, data\[0\]\.paragraphs\[0\]\.qas\[0\]: gold answer must be a string"),
    ("drop", "train", {"drop_dataset_train.json": '{"p1": {"passage": "p"}}'},
     r"drop_dataset_train.json, p1\.qa_pairs: expected a list"),
]


@pytest.mark.parametrize("name, split, files, message", BAD_FILES)
def test_bad_files_name_file_and_line(tmp_path, name, split, files, message):
    folder = write_files(tmp_path, name, files)
    with pytest.raises(ValueError, match=message) as info:
        get_task(name).records(split, folder)
    assert str(info.value).startswith(str(folder))


def test_protocol_on_a_small_folder(tmp_path):
    """A labelled test split is used as is; train + dev shrink in proportion, disjointly."""
    cb = [{"premise": f"p{i}", "hypothesis": "h", "label": ["entailment", "neutral"][i % 2]} for i in range(12)]
    write_files(tmp_path, "cb", {"train.jsonl": jsonl(*cb[:9]), "test.jsonl": jsonl(*cb[9:])})
    splits = load_splits("cb", tmp_path, train_size=8, dev_size=4, test_size=2, seed=3)
    assert [len(splits.train), len(splits.dev), len(splits.test)] == [6, 3, 2]
    assert splits.notes == ["cb: asked for train 8 + dev 4 but only 9 examples are available; "
                            "using train 6 + dev 3 (same proportion)"]
    premise = lambda ex: ex.prompt.split()[1]  # noqa: E731
    assert len({premise(e) for e in splits.train + splits.dev}) == 9
    assert {premise(e) for e in splits.test} <= {"p9", "p10", "p11"}


def test_no_train_split_divides_validation_by_record(tmp_path):
    val = [{"passage": {"text": f"p{i}", "questions": [{"question": "q", "idx": i, "answers": [
        {"text": "a", "idx": 0, "label": 1}, {"text": "b", "idx": 1, "label": 0}]}]}} for i in range(10)]
    write_files(tmp_path, "multirc", {"val.jsonl": jsonl(*val)})
    splits = load_splits("multirc", tmp_path, train_size=8, dev_size=4, test_size=8, seed=0)
    assert "divided by whole records" in splits.notes[0]
    assert {e.group for e in splits.test}.isdisjoint(e.group for e in splits.train + splits.dev)


def test_fallback_file_is_noted(tmp_path):
    row = ROWS["winogrande"]
    write_files(tmp_path, "winogrande", {"train_l.jsonl": row.files["dev.jsonl"], **row.files})
    notes = load_splits("winogrande", tmp_path, 1, 0, 1).notes
    assert any(n.startswith("winogrande: train split read from WinoGrande/train_l.jsonl") for n in notes)


@pytest.mark.parametrize("kwargs, match", [
    (dict(train_size=-1), "invalid train_size -1"), (dict(seed=1.5), "invalid seed 1.5"),
    (dict(test_size=True), "invalid test_size True"),
])
def test_bad_sizes_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_splits("sentiment-demo", **kwargs)


def test_missing_data_dir_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_splits("sst2", tmp_path / "nowhere")


def test_hub_failure_is_one_clear_line(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub\nmore detail")

    monkeypatch.delenv("ZOFT_DATA_DIR", raising=False)
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=offline))
    with pytest.raises(DataUnavailableError) as info:
        load_splits("sst2")
    message = str(info.value)
    assert "\n" not in message and "--data-dir" in message and "ZOFT_DATA_DIR" in message


@pytest.mark.parametrize("name", NAMES)
def test_hub_rows_load_through_the_protocol(monkeypatch, name):
    """A fake hub (train + validation of one row each, test unlabelled) feeds load_splits."""
    row = ROWS[name].hub
    fake = {"train": [row, row], "validation": [row]}
    monkeypatch.delenv("ZOFT_DATA_DIR", raising=False)
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=lambda *a: fake))
    splits = load_splits(name, train_size=1, dev_size=1, test_size=1)
    assert splits.test == [ROWS[name].expected] and splits.train == [ROWS[name].expected]
    assert splits.notes[0].startswith(f"{name}: loaded from the Hugging Face hub")
