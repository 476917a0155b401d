import json

import pytest

from forgetbench.config import load_suite
from forgetbench.errors import ForgetbenchError
from forgetbench.eval import harness
from tests.conftest import SUITES, suite_dict


def test_bundled_task_data_paths_resolve_against_the_yaml(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    cfg = harness._local_task_config(SUITES / "tasks" / "fb_addition.yaml")
    assert cfg["dataset_kwargs"]["data_files"]["test"] == str((SUITES / "data/addition_eval.jsonl").resolve())
    assert cfg["output_type"] == "generate_until"


def test_lm_eval_registry_tasks_are_accepted_and_typos_are_not(write_suite):
    raw = suite_dict()
    raw["tasks"]["general"] = [{"name": "hellaswag", "category": "qa"},
                               {"name": "arc_challenge", "category": "qa"},
                               {"name": "gsm8k", "category": "math"}]
    harness.check_tasks(load_suite(write_suite(raw)).tasks)  # known to lm-eval: no error
    raw["tasks"]["general"] = [{"name": "hellaswg", "category": "qa"}]
    with pytest.raises(ForgetbenchError, match="unknown lm-eval task 'hellaswg'; did you mean hellaswag"):
        harness.check_tasks(load_suite(write_suite(raw)).tasks)


def test_eval_key_follows_settings_and_task_data(write_suite, tmp_path):
    base = load_suite(write_suite(suite_dict()))
    key = harness.eval_key(harness.eval_settings(base.tasks, base.eval))
    assert key == harness.eval_key(harness.eval_settings(base.tasks, base.eval))
    other = load_suite(write_suite(suite_dict(**{"eval.num_fewshot": 2}), "b.yaml"))
    assert harness.eval_key(harness.eval_settings(other.tasks, other.eval)) != key
    # a copy of the task folder with one data item changed is a different evaluation
    import shutil
    tasks = tmp_path / "suites"
    shutil.copytree(SUITES / "tasks", tasks / "tasks")
    shutil.copytree(SUITES / "data", tasks / "data")
    edited = tasks / "data" / "capitals_eval.jsonl"
    edited.write_text(edited.read_text().replace("Paris", "Lyon"))
    changed = load_suite(write_suite(suite_dict(**{"tasks.include_path": str(tasks / "tasks")}), "c.yaml"))
    assert harness.eval_key(harness.eval_settings(changed.tasks, changed.eval)) != key


def test_chat_and_plain_evaluations_never_share_an_eval_key(write_suite):
    def key(name, **eval_settings):
        suite = load_suite(write_suite(suite_dict(**{f"eval.{k}": v for k, v in eval_settings.items()}), name))
        return harness.eval_key(harness.eval_settings(suite.tasks, suite.eval))

    plain, chat = key("a.yaml"), key("b.yaml", apply_chat_template=True)
    assert chat != plain
    assert key("c.yaml", apply_chat_template=True, fewshot_as_multiturn=False) not in (plain, chat)
    assert key("d.yaml", fewshot_as_multiturn=False) == plain  # inert without a chat template
    assert key("e.yaml", system_instruction="Be brief.") != plain


def test_a_task_defined_in_two_task_folders_is_refused(write_suite, tmp_path):
    import shutil

    shutil.copytree(SUITES / "tasks", tmp_path / "copy")
    harness._local_task_files.cache_clear()
    suite = load_suite(write_suite(suite_dict(**{"tasks.include_path": [str(SUITES / "tasks"),
                                                                         str(tmp_path / "copy")]})))
    with pytest.raises(ForgetbenchError, match=r"task 'fb_\w+' is defined twice, in .*; rename one of them"):
        harness.check_tasks(suite.tasks)


@pytest.mark.slow
def test_evaluate_a_local_model_directory_keeps_per_sample_results(write_suite, tiny_model_dir):
    suite = load_suite(write_suite(suite_dict(**{"eval.limit": 8})))
    scores = harness.evaluate(tiny_model_dir, suite.tasks, suite.eval)
    assert set(scores["tasks"]) == {"fb_medical", "fb_capitals", "fb_addition", "fb_code"}
    med = scores["tasks"]["fb_medical"]
    assert set(med["metrics"]) == {"acc", "acc_norm"} and med["n"] == 8
    assert 0 <= med["metrics"]["acc"]["value"] <= 1 and med["metrics"]["acc"]["stderr"] is not None
    mean = sum(s["values"]["acc"] for s in med["samples"]) / 8
    assert med["metrics"]["acc"]["value"] == pytest.approx(mean)
    # what compare pairs and shows: lm-eval's hashes, the prompt, the gold answer and the
    # model's as text (for multiple choice, the choice it ranked first), each item's cluster
    docs = [json.loads(line) for line in (SUITES / "data" / "medical_eval.jsonl").read_text().splitlines()]
    first, doc = med["samples"][0], docs[med["samples"][0]["doc_id"]]
    assert first["responses"]["none"] in doc["choices"] and first["target"] == doc["choices"][doc["answer"]]
    assert first["prompt"].endswith(doc["prompt"]) and first["cluster"] == doc["drug"]
    assert first["doc_hash"] and first["prompt_hash"] and first["target_hash"]
    assert med["output_type"] == "multiple_choice"
    add = scores["tasks"]["fb_addition"]
    assert set(add["metrics"]) == {"exact_match"} and len({s["doc_id"] for s in add["samples"]}) == 8
    assert add["output_type"] == "generate_until" and add["samples"][0]["target"].isdigit()
    assert scores["settings"]["versions"]["lm_eval"]
    assert scores["tokenization"]["tokenizer"]


def test_editing_an_included_template_changes_the_task_fingerprint(tmp_path):
    folder = tmp_path / "tasks"
    folder.mkdir()
    (tmp_path / "d.jsonl").write_text('{"prompt": "1+1=", "answer": "2"}\n')
    (folder / "_template.yaml").write_text("output_type: generate_until\ntest_split: test\n")
    (folder / "t.yaml").write_text("include: _template.yaml\ntask: my_t\ndataset_path: json\n"
                                   "dataset_kwargs: {data_files: {test: ../d.jsonl}}\n")
    harness._local_task_files.cache_clear()
    before = harness._task_fingerprint("my_t", (folder,))
    (folder / "_template.yaml").write_text("output_type: generate_until\ntest_split: test\nnum_fewshot: 3\n")
    assert harness._task_fingerprint("my_t", (folder,)) != before
    (tmp_path / "d.jsonl").write_text('{"prompt": "1+1=", "answer": "3"}\n')
    assert harness._task_fingerprint("my_t", (folder,)) != before


def _generation_task(folder, name, filters=""):
    (folder / f"{name}.yaml").write_text(
        f"task: {name}\ndataset_path: json\ndataset_kwargs: {{data_files: {{test: ../d.jsonl}}}}\n"
        "test_split: test\noutput_type: generate_until\ndoc_to_text: '{{prompt}}'\n"
        "doc_to_target: '{{answer}}'\ngeneration_kwargs: {until: ['\\n'], max_gen_toks: 4}\n"
        "metric_list: [{metric: exact_match, aggregation: mean, higher_is_better: true}]\n" + filters)


@pytest.mark.slow
def test_the_metric_check_accepts_exactly_the_names_an_evaluation_reports(write_suite, tiny_model_dir, tmp_path):
    folder = tmp_path / "tasks"
    folder.mkdir()
    (tmp_path / "d.jsonl").write_text('{"prompt": "1+1=", "answer": "2"}\n{"prompt": "2+2=", "answer": "4"}\n')
    # with filters lm-eval reports 'metric,filter' per filter, and no unfiltered metric
    _generation_task(folder, "filtered", "filter_list:\n"
                     "  - {name: strict, filter: [{function: regex, regex_pattern: '(\\d+)'},\n"
                     "                            {function: take_first}]}\n"
                     "  - {name: first, filter: [{function: take_first}]}\n")
    _generation_task(folder, "plain")
    raw = suite_dict(**{"tasks.include_path": str(folder), "eval.limit": 2})
    raw["tasks"]["target"] = [{"name": "filtered", "metric": "exact_match,strict"}]
    raw["tasks"]["general"] = [{"name": "plain", "category": "math", "metric": "exact_match"}]
    harness._local_task_files.cache_clear()
    suite = load_suite(write_suite(raw))
    harness.eval_items(suite.tasks)  # both declared metrics are accepted
    scores = harness.evaluate(tiny_model_dir, suite.tasks, suite.eval)
    assert set(scores["tasks"]["filtered"]["metrics"]) == {"exact_match,strict", "exact_match,first"}
    assert set(scores["tasks"]["plain"]["metrics"]) == {"exact_match"}

    raw["tasks"]["target"][0]["metric"] = "exact_match"  # reported only under a filter's name
    path = write_suite(raw, "bad.yaml")
    with pytest.raises(ForgetbenchError, match=(
            rf"^{path}: tasks.target\[0\].metric: 'exact_match' is not a metric lm-eval reports for task "
            r"'filtered'; valid: exact_match,strict, exact_match,first$")):
        harness.eval_items(load_suite(path).tasks, str(path))


@pytest.mark.slow
def test_an_evaluation_outside_a_git_repository_prints_no_git_error(write_suite, tiny_model_dir, tmp_path,
                                                                     monkeypatch, capfd):
    suite = load_suite(write_suite(suite_dict(**{"eval.limit": 2})))
    monkeypatch.chdir(tmp_path)  # lm-eval asks git for the working directory's commit
    import subprocess
    assert subprocess.run(["git", "rev-parse"], capture_output=True).returncode != 0  # not a repository
    harness.evaluate(tiny_model_dir, suite.tasks, suite.eval)
    err = capfd.readouterr().err
    assert "fatal:" not in err and "not a git repository" not in err


def _task_folder(tmp_path, doc_to_text: str):
    folder = tmp_path / "tasks"
    folder.mkdir()
    (tmp_path / "d.jsonl").write_text('{"prompt": "1+1=", "answer": "2"}\n')
    (folder / "mine.yaml").write_text(
        "task: mine\ndataset_path: json\ndataset_kwargs: {data_files: {test: ../d.jsonl}}\ntest_split: test\n"
        f"output_type: generate_until\ndoc_to_text: {doc_to_text}\ndoc_to_target: answer\n"
        "metric_list: [{metric: exact_match, aggregation: mean, higher_is_better: true}]\n")
    return folder


def test_a_function_tag_whose_module_cannot_be_imported_names_the_file_and_the_module(tmp_path):
    path = _task_folder(tmp_path, "!function nosuchmodule.fn") / "mine.yaml"
    with pytest.raises(ForgetbenchError, match=(
            rf"^{path}: a !function tag needs module 'nosuchmodule', which cannot be imported \(Cannot import "
            r"module 'nosuchmodule' for function 'fn' .*\); correct the tag, or make the module importable")):
        harness._local_task_config(path)
    path.write_text(path.read_text().replace("nosuchmodule.fn", "os.nosuchfn"))
    with pytest.raises(ForgetbenchError, match=rf"^{path}: a !function tag: Module 'os' has no function 'nosuchfn'"):
        harness._local_task_config(path)


def test_a_task_yaml_that_is_not_utf8_is_one_line_naming_it(tmp_path, write_suite):
    folder = _task_folder(tmp_path, "prompt")
    path = folder / "mine.yaml"
    path.write_bytes(b"# caf\xe9\n" + path.read_bytes())
    suite = load_suite(write_suite(suite_dict(**{"tasks.include_path": [str(SUITES / "tasks"), str(folder)]})))
    with pytest.raises(ForgetbenchError, match=rf"^{path}: not UTF-8 text at line 1 \(byte 0xe9\); save the file"):
        harness.check_tasks(suite.tasks)


def test_declared_metrics_are_read_from_the_task_configs(write_suite):
    raw = suite_dict()
    raw["tasks"]["general"] = [{"name": "fb_capitals", "category": "qa"}, {"name": "gsm8k", "category": "math"},
                               {"name": "mmlu_stem", "category": "qa"}]
    assert harness.declared_metrics(load_suite(write_suite(raw)).tasks) == {
        "fb_medical": ["acc", "acc_norm"], "fb_capitals": ["acc", "acc_norm"],
        "gsm8k": ["exact_match,strict-match", "exact_match,flexible-extract"],
        "mmlu_stem": None}  # a group: known from its results only
