"""Training data through the `datasets` library: a parquet file and a folder written by
save_to_disk, mapped to prompt/completion rows by field names or Jinja templates, hashed
into point ids, read by the leakage guard, and trained on exactly as the same rows in JSONL."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from forgetbench.cli import main
from forgetbench.config import DatasetSource, Point, load_suite
from forgetbench.datafiles import numbered_rows, read_rows, source_fingerprint
from forgetbench.errors import ForgetbenchError
from forgetbench.leakage import check_leakage
from forgetbench.sweep import planned
from tests.conftest import SUITES, suite_dict

TEMPLATE = {"prompt": "{{question}}", "completion": " {{ answer }}\n"}


def medical_frame() -> pd.DataFrame:
    """The bundled target rows as a table of the kind users have: question and answer columns."""
    rows = [json.loads(line) for line in (SUITES / "data" / "medical_train.jsonl").read_text().splitlines()]
    return pd.DataFrame({"question": [r["prompt"] for r in rows], "answer": [r["completion"].strip() for r in rows],
                         "n": range(len(rows))})


@pytest.fixture
def parquet(tmp_path):
    path = tmp_path / "medical.parquet"
    medical_frame().to_parquet(path)
    return path


@pytest.fixture
def saved(tmp_path):
    import datasets

    frame = medical_frame()
    folder = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_pandas(frame[:100]),
                          "validation": datasets.Dataset.from_pandas(frame[100:])}).save_to_disk(str(folder))
    return folder


def suite_with(write_suite, **data):
    return load_suite(write_suite(suite_dict(**{f"data.{k}": v for k, v in data.items()})))


def test_a_parquet_file_mapped_by_templates_gives_the_rows_of_the_jsonl_it_was_made_from(write_suite, parquet):
    suite = suite_with(write_suite, target={"dataset": str(parquet), **TEMPLATE})
    assert isinstance(suite.data.target, DatasetSource)
    jsonl = read_rows(SUITES / "data" / "medical_train.jsonl")
    assert read_rows(suite.data.target) == jsonl
    # the same by field names, with a column of numbers made text
    named = suite_with(write_suite, target={"dataset": str(parquet), "prompt": "question", "completion": "n"})
    assert read_rows(named.data.target)[3] == {"prompt": jsonl[3]["prompt"], "completion": "3"}
    # a slice of the file's rows; a text mapping skips the rows it leaves empty
    part = suite_with(write_suite, target={"dataset": str(parquet), "split": "train[:-5]", **TEMPLATE})
    assert read_rows(part.data.target) == jsonl[:-5]
    texts = suite_with(write_suite, target={"dataset": str(parquet), "text": "{% if n % 2 %}{{ question }}{% endif %}"})
    assert numbered_rows(texts.data.target)[:2] == [(1, {"text": jsonl[1]["prompt"]}),
                                                    (3, {"text": jsonl[3]["prompt"]})]


def test_a_saved_dataset_folder_is_read_by_split(write_suite, saved):
    train = suite_with(write_suite, target={"dataset": str(saved), **TEMPLATE})  # split: train by default
    validation = suite_with(write_suite, target={"dataset": str(saved), "split": "validation", **TEMPLATE})
    rows = read_rows(SUITES / "data" / "medical_train.jsonl")
    assert read_rows(train.data.target) == rows[:100] and read_rows(validation.data.target) == rows[100:]
    sliced = suite_with(write_suite, target={"dataset": str(saved), "split": "train[-10:]", **TEMPLATE})
    assert read_rows(sliced.data.target) == rows[90:100]  # a slice, as load_dataset reads hub splits
    wrong = suite_with(write_suite, target={"dataset": str(saved), "split": "test", **TEMPLATE})
    with pytest.raises(ForgetbenchError, match=r"no split 'test'; its splits: train, validation \(set split\)"):
        read_rows(wrong.data.target)


@pytest.mark.parametrize("mapping, message", [
    ({}, "its columns are question, answer, n; say which make each row"),
    ({"prompt": "questions", "completion": "answer"}, "prompt: no column 'questions'; its columns: question, answer"),
    ({"prompt": "Q: {{ question }}", "completion": "{{ anwser }}"},
     "row 0: completion: 'anwser' is undefined in the template"),
    ({"prompt": "{{ question", "completion": "answer"}, "prompt: not a valid Jinja template"),
])
def test_a_mapping_that_does_not_fit_the_columns_is_one_line_naming_the_dataset(write_suite, parquet, mapping,
                                                                                 message):
    suite = suite_with(write_suite, target={"dataset": str(parquet), **mapping})
    with pytest.raises(ForgetbenchError) as info:
        read_rows(suite.data.target)
    assert str(info.value).startswith(f"dataset {parquet}") and message in str(info.value)
    assert "\n" not in str(info.value)


def test_half_a_mapping_or_two_mappings_are_refused_when_the_suite_loads(write_suite, parquet, tmp_path, capsys):
    for data, message in [({"prompt": "question"}, "set prompt and completion together"),
                          ({"prompt": "question", "completion": "answer", "text": "question"}, "not both")]:
        path = write_suite(suite_dict(**{"data.target": {"dataset": str(parquet), **data}}))
        assert main(["sweep", str(path), "--runs-dir", str(tmp_path / "runs"), "--dry-run"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{path}: data.target" in err and message in err
    assert not (tmp_path / "runs").exists()


def test_a_plain_path_to_a_parquet_file_or_a_saved_folder_is_a_dataset(write_suite, tmp_path, saved):
    frame = pd.DataFrame({"prompt": ["a", "b"], "completion": [" x", " y"]})
    frame.to_parquet(tmp_path / "pc.parquet")
    suite = suite_with(write_suite, target=str(tmp_path / "pc.parquet"), replay=str(saved))
    assert read_rows(suite.data.target) == [{"prompt": "a", "completion": " x"}, {"prompt": "b", "completion": " y"}]
    with pytest.raises(ForgetbenchError, match="say which make each row"):  # question/answer: no default mapping
        read_rows(suite.data.replay)


def test_the_point_id_follows_the_data_and_its_mapping_not_the_file_name(write_suite, parquet, tmp_path):
    point = Point(lr=1e-3, epochs=1, mix_ratio=0.0, regularizer="none", lam=0.0)

    def pid(path, **mapping):
        return planned(suite_with(write_suite, target={"dataset": str(path), **TEMPLATE, **mapping}), point).id

    first = pid(parquet)
    copy = tmp_path / "elsewhere" / "medical.parquet"
    copy.parent.mkdir()
    copy.write_bytes(parquet.read_bytes())
    assert pid(copy) == first  # same name and content elsewhere: same data
    assert pid(parquet, completion=" {{answer}}.\n") != first  # another mapping: other rows
    medical_frame()[:-1].to_parquet(parquet)  # one row less
    assert pid(parquet) != first
    jsonl = planned(suite_with(write_suite), point).id
    assert jsonl not in (first, pid(parquet))


def test_a_hub_dataset_is_identified_by_the_commit_the_cache_holds(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    source = DatasetSource(dataset="org/med-qa", split="train", prompt="question", completion="answer")
    assert source_fingerprint(source)["commit"] is None  # not cached
    refs = tmp_path / "hub" / "datasets--org--med-qa" / "refs"
    refs.mkdir(parents=True)
    (refs / "main").write_text("a" * 40)
    assert source_fingerprint(source)["commit"] == "a" * 40
    (refs / "main").write_text("b" * 40)  # a newer revision downloaded: other data
    assert source_fingerprint(source)["commit"] == "b" * 40


def test_a_hub_dataset_that_is_not_cached_names_the_command_that_caches_it(write_suite, tmp_path, monkeypatch,
                                                                           capsys):
    import datasets.config
    from huggingface_hub import constants

    # the libraries read these when imported: offline now, without a network's retries
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    path = write_suite(suite_dict(**{"data.target": {"dataset": "forgetbench-test/no-such-set", "name": "qa",
                                                     "prompt": "q", "completion": "a"}}))
    assert main(["sweep", str(path), "--runs-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("forgetbench: error: dataset forgetbench-test/no-such-set")
    assert ("""python -c "import datasets; datasets.load_dataset('forgetbench-test/no-such-set', name='qa', """
            """split='train')\"""") in err
    assert not (tmp_path / "runs").exists()


def test_a_leak_planted_in_a_dataset_row_is_refused_naming_the_row(write_suite, tmp_path):
    from forgetbench.eval.harness import eval_items

    frame = medical_frame()
    evals = [json.loads(line) for line in (SUITES / "data" / "addition_eval.jsonl").read_text().splitlines()]
    frame.loc[57, "answer"] = f"{evals[17]['prompt']} {evals[17]['answer']}"  # an addition item in a reply
    frame.to_parquet(tmp_path / "leaky.parquet")
    suite = suite_with(write_suite, target={"dataset": str(tmp_path / "leaky.parquet"), **TEMPLATE})
    with pytest.raises(ForgetbenchError) as info:
        check_leakage(suite, eval_items(suite.tasks))
    msg = str(info.value)
    assert msg.startswith(f"dataset {tmp_path / 'leaky.parquet'} row 57: data.target row leaks an evaluation item")
    assert "fb_addition doc 17" in msg and "\n" not in msg


def test_validation_rows_of_a_saved_dataset_that_are_trained_on_are_refused(write_suite, saved):
    suite = suite_with(write_suite, target={"dataset": str(saved), **TEMPLATE},
                       validation={"dataset": str(saved), "split": "train", **TEMPLATE})
    with pytest.raises(ForgetbenchError, match=r"row 0: data.validation row is also trained on, as data.target"):
        check_leakage(suite, {})


@pytest.mark.slow
def test_training_on_a_parquet_dataset_is_training_on_the_same_rows_in_jsonl(write_suite, parquet, tiny_model_dir,
                                                                            tmp_path):
    from forgetbench.train.recipe import train_point

    point = Point(lr=1e-3, epochs=0.25, mix_ratio=0.0, regularizer="none", lam=0.0)
    logs = []
    for name, target in (("jsonl", str(SUITES / "data" / "medical_train.jsonl")),
                         ("parquet", {"dataset": str(parquet), **TEMPLATE})):
        raw = suite_dict(**{"data.target": target})
        raw["train"].update({"eval_every": None, "track_kl": False, "batch_size": 8})
        out = tmp_path / name
        train_point(load_suite(write_suite(raw, f"{name}.yaml")), point, base_model_dir=tiny_model_dir,
                    out_dir=out, log_path=out / "log.jsonl")
        logs.append([json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()])
    assert len(logs[0]) >= 4 and logs[0] == logs[1]


def test_a_null_cell_renders_as_nothing_and_a_file_rewritten_with_its_old_mtime_is_read_anew(write_suite, tmp_path):
    import os

    path = tmp_path / "notes.parquet"
    pd.DataFrame({"question": ["q1", "q2"], "note": ["seen", None]}).to_parquet(path)
    suite = suite_with(write_suite, target={"dataset": str(path), "text": "{{ question }}: {{ note }}"})
    assert read_rows(suite.data.target) == [{"text": "q1: seen"}, {"text": "q2: "}]  # not "q2: None"
    stat = path.stat()
    pd.DataFrame({"question": ["q3", "q4"], "note": ["seen", None]}).to_parquet(path)  # same size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # as cp -p or rsync -t leave it
    assert path.stat().st_size == stat.st_size
    # read anew in this very process: the file's ctime, which no copy can set, changed
    assert read_rows(suite.data.target) == [{"text": "q3: seen"}, {"text": "q4: "}]
