import json
import re

import pytest

from forgetbench.cli import main
from forgetbench.config import load_suite
from forgetbench.errors import ForgetbenchError
from forgetbench.eval.harness import eval_items
from forgetbench.leakage import (
    MAX_ITEM_TOKENS,
    build_index,
    check_leakage,
    find_leaks,
    tokens,
)
from tests.conftest import SUITES, suite_dict

SUM = {"sums": [("12+34=", "46")]}
DRUG = {"med": [("Bisoprolol is used to treat", "high blood pressure")]}


def eval_rows(name):
    return [json.loads(line) for line in (SUITES / "data" / name).read_text().splitlines()]


@pytest.fixture(scope="module")
def bundled_items():
    return eval_items(load_suite(SUITES / "medical.yaml").tasks)


def test_tokens_ignore_case_whitespace_and_unicode_width():
    assert tokens("12+34=46") == tokens("12 + 34 = 46") == ("12", "+", "34", "=", "46")
    assert tokens("The capital of\n  FRANCE is") == tokens("the capital of france is")
    assert tokens("ｆｕｌｌ ｗｉｄｔｈ ＝ ﬁne") == ("full", "width", "=", "fine")  # NFKC
    assert tokens("def f(a, b):\n    return a+b") == tokens("def f ( a , b ) : return a + b")
    assert tokens("1234") != tokens("12 34")  # digits split by a space are other numbers


def test_a_prompt_that_is_an_eval_question_leaks_whatever_the_completion():
    index = build_index(DRUG)
    rows = [{"prompt": "bisoprolol IS used  to treat", "completion": " allergies"}]
    [leak] = find_leaks(rows, index)
    assert (leak.row, leak.rule, leak.item.task, leak.item.doc) == (0, "question", "med", 0)


@pytest.mark.parametrize("row", [
    {"text": "12 + 34 = 46"},
    {"text": "Warm-up: 12+34=46, then 5+5=10."},
    {"prompt": "Quiz: 12+34=", "completion": "46"},   # question in the prompt, answer learned
    {"prompt": "Quiz:", "completion": " 12+34=46\n"},
    {"prompt": "Doctors say bisoprolol is used to treat", "completion": " high blood pressure"},
])
def test_question_and_answer_inside_a_row_leak(row):
    index = build_index({**SUM, **DRUG})
    [leak] = find_leaks([row], index)
    assert leak.rule == "content"


@pytest.mark.parametrize("row", [
    {"text": "12+34=47"},                          # a different sum
    {"text": "112+34=146"},                        # tokens are whole numbers
    {"text": "12+34="},                            # the question alone, no answer
    {"text": "46 = 12 + 34"},                      # same tokens, another order
    {"prompt": "Propranolol is used to treat", "completion": " high blood pressure"},  # another drug
    {"prompt": "What is bisoprolol used to treat?", "completion": " high blood pressure"},
])
def test_other_rows_do_not_leak(row):
    assert find_leaks([row], build_index({**SUM, **DRUG})) == []


def test_items_longer_than_the_cap_are_found_by_their_last_tokens():
    words = [f"w{i}" for i in range(100)]
    question, answer = " ".join(words), "the answer is 42"
    index = build_index({"long": [(question, answer)]})
    assert len(tokens(question + " " + answer)) > MAX_ITEM_TOKENS
    whole = {"text": f"Intro. {question} {answer}. Outro."}
    tail = {"text": " ".join(words[-(MAX_ITEM_TOKENS - 4):]) + " " + answer}  # last 64 tokens
    other = {"text": f"{question} the answer is 41"}
    short_tail = {"text": " ".join(words[-(MAX_ITEM_TOKENS - 6):]) + " " + answer}
    leaks = find_leaks([whole, tail, other, short_tail], index)
    assert [leak.row for leak in leaks] == [0, 1]


def test_many_rows_many_items_each_leaking_row_reported_once():
    items = {"sums": [(f"{a}+{a + 1}=", str(2 * a + 1)) for a in range(500)]}
    rows = [{"text": f"{a}+{a + 1}={2 * a + 1} and {a}+{a + 1}={2 * a + 1}"} for a in range(0, 1000, 7)]
    leaks = find_leaks(rows, build_index(items))
    assert [leak.row for leak in leaks] == [i for i, a in enumerate(range(0, 1000, 7)) if a < 500]
    assert all(leak.item.doc == 7 * leak.row for leak in leaks)


def test_bundled_tasks_yield_every_eval_document_as_question_and_gold_answer(bundled_items):
    assert set(bundled_items) == {"fb_medical", "fb_capitals", "fb_addition", "fb_code"}
    for task, name in [("fb_medical", "medical_eval.jsonl"), ("fb_capitals", "capitals_eval.jsonl")]:
        docs = eval_rows(name)
        assert bundled_items[task] == [(d["prompt"], d["choices"][d["answer"]]) for d in docs]
    for task, name in [("fb_addition", "addition_eval.jsonl"), ("fb_code", "code_eval.jsonl")]:
        assert bundled_items[task] == [(d["prompt"], d["answer"]) for d in eval_rows(name)]


def test_the_default_suite_passes_the_guard(bundled_items):
    suite = load_suite(SUITES / "medical.yaml")
    assert suite.data.validation and suite.data.general_heldout  # every checked file is set
    check_leakage(suite, bundled_items)


def with_rows(tmp_path, source, name, extra, at=None):
    """A copy of the bundled data file ``source`` with ``extra`` rows after line ``at`` (end
    if None) and a blank line before them; returns the path and the first extra row's line."""
    lines = (SUITES / "data" / source).read_text().splitlines() if source else []
    at = len(lines) if at is None else at
    new = lines[:at] + [""] + [json.dumps(r) for r in extra] + lines[at:]
    path = tmp_path / name
    path.write_text("\n".join(new) + "\n")
    return path, at + 2


def capitals_item():
    d = eval_rows("capitals_eval.jsonl")[5]
    return {"text": f"{d['prompt']} {d['choices'][d['answer']]}."}, "fb_capitals doc 5"


def addition_item():
    d = eval_rows("addition_eval.jsonl")[17]
    return {"text": f"{d['prompt']} {d['answer']}"}, "fb_addition doc 17"


@pytest.mark.parametrize("item, dry_run", [(capitals_item, False), (addition_item, True)])
def test_sweep_refuses_replay_data_holding_an_eval_item(write_suite, tmp_path, capsys, item, dry_run):
    row, names = item()
    replay, line = with_rows(tmp_path, "general_replay.jsonl", "replay.jsonl", [row, row], at=40)
    suite = write_suite(suite_dict(**{"data.replay": str(replay)}))
    runs = tmp_path / "runs"
    code = main(["sweep", str(suite), "--runs-dir", str(runs)] + (["--dry-run"] if dry_run else []))
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("forgetbench: error: ")
    assert f"{replay}:{line}: data.replay row" in err
    assert names in err and "2 row(s) of data.replay" in err
    assert "remove those rows from data.replay" in err
    assert not runs.exists()


def test_a_target_row_asking_a_target_eval_question_is_refused(tmp_path, write_suite, bundled_items):
    d = eval_rows("medical_eval.jsonl")[3]
    target, line = with_rows(tmp_path, "medical_train.jsonl", "train.jsonl",
                             [{"prompt": d["prompt"], "completion": " anxiety\n"}])
    suite = load_suite(write_suite(suite_dict(**{"data.target": str(target)})))
    with pytest.raises(ForgetbenchError) as info:
        check_leakage(suite, bundled_items)
    msg = str(info.value)
    assert msg.startswith(f"{target}:{line}: data.target row leaks")
    assert "its prompt is the question of fb_medical doc 3" in msg and "\n" not in msg


def test_validation_rows_that_are_trained_on_are_refused(tmp_path, write_suite, bundled_items):
    train = eval_rows("medical_train.jsonl")
    validation, line = with_rows(tmp_path, "medical_validation.jsonl", "validation.jsonl",
                                 [train[10], train[11]], at=0)
    suite = load_suite(write_suite(suite_dict(**{"data.validation": str(validation)})))
    with pytest.raises(ForgetbenchError) as info:
        check_leakage(suite, bundled_items)
    target = SUITES.resolve() / "data" / "medical_train.jsonl"
    assert str(info.value) == (
        f"{validation}:{line}: data.validation row is also trained on, as data.target "
        f"({target}:11); 2 row(s) of data.validation are in the training data in all, so they "
        "are not held out: remove those rows from data.validation (or from data.target)")


def test_general_heldout_rows_in_replay_are_refused(tmp_path, write_suite, bundled_items):
    replay = eval_rows("general_replay.jsonl")
    heldout, line = with_rows(tmp_path, "general_heldout.jsonl", "heldout.jsonl", [replay[0]])
    suite = load_suite(write_suite(suite_dict(**{"data.general_heldout": str(heldout)})))
    with pytest.raises(ForgetbenchError, match=rf"^{re.escape(str(heldout))}:{line}: "
                                               "data.general_heldout row .* as data.replay"):
        check_leakage(suite, bundled_items)


def test_fisher_and_general_heldout_data_are_not_checked_against_eval(tmp_path, write_suite,
                                                                       bundled_items):
    row, _ = addition_item()
    fisher, _ = with_rows(tmp_path, "general_replay.jsonl", "fisher.jsonl", [row])
    heldout, _ = with_rows(tmp_path, "general_heldout.jsonl", "heldout.jsonl", [row])
    suite = load_suite(write_suite(suite_dict(**{"data.fisher": str(fisher),
                                                 "data.general_heldout": str(heldout)})))
    check_leakage(suite, bundled_items)  # never trained on: no error
