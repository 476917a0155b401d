"""forgetbench's scores are lm-eval's: the command `forgetbench eval --print-lm-eval` prints,
run as it is through the lm_eval CLI from another directory, gives every metric forgetbench
stored, to the last digit."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys

import pytest

from forgetbench.cli import main
from forgetbench.config import load_suite
from forgetbench.errors import ForgetbenchError
from forgetbench.eval.harness import _metric_name, _split_metric_key, lm_eval_command
from tests.conftest import SUITES, suite_dict

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _chat_copy(tmp_path):
    """The embedded model with a ChatML template in its tokenizer: a chat model."""
    from transformers import AutoTokenizer

    from forgetbench.models import resolve_model

    out = tmp_path / "chat-model"
    shutil.copytree(resolve_model("builtin:tiny-llama"), out)
    tok = AutoTokenizer.from_pretrained(out)
    tok.chat_template = CHATML
    tok.save_pretrained(out)
    return str(out)


def _second_task_folder(tmp_path):
    """A folder of the user's own tasks, used beside the bundled one: a renamed copy of fb_addition."""
    import yaml

    mine = tmp_path / "my_tasks"
    mine.mkdir()
    raw = yaml.safe_load((SUITES / "tasks" / "fb_addition.yaml").read_text().replace(
        "!function fb_data.load_relative", "null"))
    raw.pop("custom_dataset")
    raw["task"] = "my_addition"
    raw["dataset_kwargs"]["data_files"] = {k: str((SUITES / "tasks" / v).resolve())
                                           for k, v in raw["dataset_kwargs"]["data_files"].items()}
    (mine / "my_addition.yaml").write_text(yaml.safe_dump(raw))
    return mine


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["plain", "chat, two task folders"])
def test_the_printed_lm_eval_command_reproduces_every_metric(write_suite, tmp_path, capsys, kind):
    # the embedded model: it knows the general tasks, so the scores compared are not all 0
    raw = suite_dict(**{"eval.limit": 24})
    model = "builtin:tiny-llama"
    if kind != "plain":
        model = _chat_copy(tmp_path)
        raw["eval"].update(apply_chat_template=True, system_instruction="Answer briefly.")
        raw["tasks"]["include_path"] = [str(SUITES / "tasks"), str(_second_task_folder(tmp_path))]
        raw["tasks"]["general"][1] = {"name": "my_addition", "category": "math", "metric": "exact_match"}
    path = write_suite(raw)
    runs = tmp_path / "runs"
    assert main(["eval", model, "--suite", str(path), "--runs-dir", str(runs), "--json"]) == 0
    ours = json.loads(capsys.readouterr().out)
    assert main(["eval", model, "--suite", str(path), "--print-lm-eval"]) == 0
    printed = capsys.readouterr().out.strip()
    elsewhere = tmp_path / "elsewhere"  # not the repository: the bundled tasks find their data anyway
    elsewhere.mkdir()
    if kind != "plain":  # the several folders go through a --config file, written as printed
        heredoc, _, printed = printed.partition("EOF\n")
        assert heredoc.startswith("cat > lm_eval_config.yaml <<'EOF'\n")
        (elsewhere / "lm_eval_config.yaml").write_text(heredoc.partition("\n")[2])
    cmd = shlex.split(printed)
    assert cmd[:2] == ["lm_eval", "run"] and "--seed" in cmd and "--batch_size" in cmd
    assert ("--apply_chat_template" in cmd) == (kind != "plain")
    assert "add_bos_token=False,max_length=512" in cmd[cmd.index("--model_args") + 1]  # pinned from the model
    assert ours["tokenization"]["add_bos_token"] is False and ours["tokenization"]["max_length"] == 512

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "lm_eval", *cmd[1:], "--output_path", str(tmp_path / "cli")],
                          cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    [stored] = list((runs / "evals").glob("*.json"))  # the record --json printed, with its samples
    prompts = [s["prompt"] for r in json.loads(stored.read_text())["tasks"].values() for s in r["samples"]]
    # the chat template and the system turn reached the prompts (so the comparison below is of chat scores)
    assert all(p.startswith("<|im_start|>system\nAnswer briefly.") for p in prompts) == (kind != "plain")
    [results_file] = list((tmp_path / "cli").rglob("results_*.json"))
    theirs = json.loads(results_file.read_text())["results"]

    compared = 0
    for task, result in ours["tasks"].items():
        for key, value in theirs[task].items():
            split = _split_metric_key(key)
            if split is None or not isinstance(value, (int, float)):
                continue
            metric, filt = split
            mine = result["metrics"][_metric_name(metric, filt)]
            assert mine["value"] == value, (task, key)
            stderr = theirs[task].get(f"{metric}_stderr,{filt}")
            if isinstance(stderr, (int, float)):
                assert mine["stderr"] == stderr, (task, key, "stderr")
            compared += 1
    assert compared == sum(len(r["metrics"]) for r in ours["tasks"].values())  # every metric stored
    assert any(0 < m["value"] < 1 for r in ours["tasks"].values() for m in r["metrics"].values())


def test_a_local_task_the_cli_would_read_against_its_working_directory_is_refused(write_suite, tmp_path):
    from forgetbench.eval.harness import _local_task_files

    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tmp_path / "d.jsonl").write_text('{"prompt": "1+1=", "answer": "2"}\n')

    def write_tasks(data: str) -> None:
        for name in ("mine", "other"):
            (tasks / f"{name}.yaml").write_text(
                f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
                "test_split: test\noutput_type: generate_until\ndoc_to_text: prompt\ndoc_to_target: answer\n"
                "metric_list:\n  - metric: exact_match\n")
        _local_task_files.cache_clear()

    write_tasks("../d.jsonl")
    raw = suite_dict()
    raw["tasks"] = {"include_path": str(tasks), "target": [{"name": "mine"}],
                    "general": [{"name": "other", "category": "math"}]}
    suite = load_suite(write_suite(raw))
    with pytest.raises(ForgetbenchError, match="is relative, which the lm_eval CLI reads against its working"):
        lm_eval_command("/m", suite.tasks, suite.eval, pins={"add_bos_token": True, "max_length": 64})
    write_tasks(str(tmp_path / "d.jsonl"))  # absolute: printed as it is
    cmd = lm_eval_command("/m, a", suite.tasks, suite.eval, pins={"add_bos_token": True, "max_length": 64})
    assert cmd[cmd.index("--tasks") + 1] == "mine,other"
    args = json.loads(cmd[cmd.index("--model_args") + 1])  # (a comma in the path: as JSON)
    assert args["pretrained"] == "/m, a" and args["add_bos_token"] is True and args["max_length"] == 64
