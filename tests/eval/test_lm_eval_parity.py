"""forgetbench's scores are lm-eval's: the command `forgetbench eval --print-lm-eval` prints,
run as it is through the lm_eval CLI from another directory, gives every metric forgetbench
stored, to the last digit."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

import pytest

from forgetbench.cli import main
from forgetbench.config import load_suite
from forgetbench.errors import ForgetbenchError
from forgetbench.eval.harness import _metric_name, _split_metric_key, lm_eval_command
from tests.conftest import suite_dict


@pytest.mark.slow
def test_the_printed_lm_eval_command_reproduces_every_metric(write_suite, tmp_path, capsys):
    # the embedded model: it knows the general tasks, so the scores compared are not all 0
    path = write_suite(suite_dict(**{"eval.limit": 24}))
    runs = tmp_path / "runs"
    assert main(["eval", "builtin:tiny-llama", "--suite", str(path), "--runs-dir", str(runs), "--json"]) == 0
    ours = json.loads(capsys.readouterr().out)
    assert main(["eval", "builtin:tiny-llama", "--suite", str(path), "--print-lm-eval"]) == 0
    printed = capsys.readouterr().out.strip()
    cmd = shlex.split(printed)
    assert cmd[:2] == ["lm_eval", "run"] and "--seed" in cmd and "--batch_size" in cmd

    elsewhere = tmp_path / "elsewhere"  # not the repository: the bundled tasks find their data anyway
    elsewhere.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "lm_eval", *cmd[1:], "--output_path", str(tmp_path / "cli")],
                          cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
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
        lm_eval_command("/m", suite.tasks, suite.eval)
    write_tasks(str(tmp_path / "d.jsonl"))  # absolute: printed as it is
    cmd = lm_eval_command("/m, a", suite.tasks, suite.eval)
    assert cmd[cmd.index("--tasks") + 1] == "mine,other"
    assert json.loads(cmd[cmd.index("--model_args") + 1])["pretrained"] == "/m, a"  # (a comma: as JSON)
