import json
import subprocess
import sys

from tests.conftest import REPO, SUITES


def rows(name):
    return [json.loads(l) for l in (SUITES / "data" / name).read_text().splitlines()]


def test_committed_data_is_what_the_generator_writes():
    done = subprocess.run([sys.executable, "tools/make_bundled_data.py", "--check"], cwd=REPO,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_no_eval_item_appears_in_training_or_replay_data():
    replay = {r["text"] for r in rows("general_replay.jsonl")}
    pretrain = {json.loads(l)["text"] for l in (REPO / "forgetbench/builtin/pretrain.jsonl").read_text().splitlines()}
    for r in rows("addition_eval.jsonl"):
        assert r["prompt"] + r["answer"] not in replay | pretrain
    for r in rows("code_eval.jsonl"):
        assert f"{r['prompt']} {r['answer']}" not in replay | pretrain
    for r in rows("capitals_eval.jsonl"):
        assert f"{r['prompt']} {r['choices'][r['answer']]}." not in replay  # in pretraining only
    trained_drugs = {r["prompt"].split()[0].lower() for r in rows("medical_train.jsonl")
                     if r["prompt"].endswith("is used to treat")}
    assert len(trained_drugs) > 50
    assert not trained_drugs & {r["drug"] for r in rows("medical_eval.jsonl")}


def test_every_eval_drug_shares_its_stem_with_trained_drugs():
    # the held-out split is learnable: each held-out drug's stem is taught by other drugs
    train_text = " ".join(r["prompt"].lower() for r in rows("medical_train.jsonl"))
    for r in rows("medical_eval.jsonl"):
        assert r["drug"].endswith(r["stem"]) and r["stem"] in train_text
