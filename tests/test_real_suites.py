"""The real-model suites (suites/medical-llama.yaml, suites/medical-qwen-chat.yaml) offline: a
Hugging Face cache that holds each model's config.json alone (what `hf download ID config.json`
leaves), the hub and datasets offline. `plan` and `sweep --dry-run` need nothing more; a real
sweep, and `forgetbench cache` without the hub, stop in one line naming the command that caches
what is missing."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from forgetbench.cli import main
from forgetbench.config import load_suite
from tests.conftest import SUITES

# config.json as published on the hub (typed in from the model pages)
LLAMA_3_2_1B = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 128000, "eos_token_id": 128001, "head_dim": 64, "hidden_act": "silu",
    "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 8192,
    "max_position_embeddings": 131072, "mlp_bias": False, "model_type": "llama",
    "num_attention_heads": 32, "num_hidden_layers": 16, "num_key_value_heads": 8,
    "pretraining_tp": 1, "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
    "transformers_version": "4.45.0.dev0", "use_cache": True, "vocab_size": 128256}
QWEN_2_5_7B_INSTRUCT = {
    "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
    "eos_token_id": 151645, "hidden_act": "silu", "hidden_size": 3584, "initializer_range": 0.02,
    "intermediate_size": 18944, "max_position_embeddings": 32768, "max_window_layers": 28,
    "model_type": "qwen2", "num_attention_heads": 28, "num_hidden_layers": 28,
    "num_key_value_heads": 4, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
    "sliding_window": 131072, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "transformers_version": "4.43.1", "use_cache": True, "use_sliding_window": False,
    "vocab_size": 152064}

# suite file -> (model, its config, its parameter count: 1.24B with tied embeddings, 7.62B)
REAL = {"medical-llama.yaml": ("meta-llama/Llama-3.2-1B", LLAMA_3_2_1B, 1_235_814_400),
        "medical-qwen-chat.yaml": ("Qwen/Qwen2.5-7B-Instruct", QWEN_2_5_7B_INSTRUCT, 7_615_616_512)}
SNAPSHOT = "5f0b02c75b57c5855da9ae460ce51323ea669d8a"  # any commit: the folder name is the revision


def _cache_configs(cache: Path, files: dict[str, dict[str, str]]) -> None:
    """A hub cache as huggingface_hub lays it out: model -> {file name: text} in one snapshot."""
    for model, texts in files.items():
        repo = cache / ("models--" + model.replace("/", "--"))
        (repo / "snapshots" / SNAPSHOT).mkdir(parents=True)
        for name, text in texts.items():
            (repo / "snapshots" / SNAPSHOT / name).write_text(text)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(SNAPSHOT)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch) -> Path:
    """The hub and datasets offline, and a Hugging Face cache with the real suites' config.json
    files only. The libraries read their constants at call time; the environment is set too,
    for any process started from here."""
    import datasets.config
    from huggingface_hub import constants

    cache = tmp_path / "hf" / "hub"
    _cache_configs(cache, {model: {"config.json": json.dumps(cfg)} for model, cfg, _ in REAL.values()})
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf" / "datasets")
    for key, value in {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1",
                       "HF_DATASETS_OFFLINE": "1", "HF_ALLOW_CODE_EVAL": "1"}.items():
        monkeypatch.setenv(key, value)
    return cache


def _one_line(err: str) -> str:
    assert err.count("\n") == 1 and err.startswith("forgetbench: error: "), err
    return err


@pytest.mark.parametrize("name", sorted(REAL))
def test_suite_names_registered_tasks_and_metrics_they_report(name):
    """Every task is in lm-eval's registry and reports the declared headline metric, read from
    its YAML config (no data); the gate selects tasks of the suite; code tasks opt in."""
    from forgetbench.eval.harness import _task_manager, config_metrics, registry_config
    from forgetbench.gate import suite_gate

    suite = load_suite(SUITES / name)
    assert suite.model == REAL[name][0] and not suite.tasks.include_path
    manager = _task_manager((), True)
    for task, role in suite.all_tasks():
        cfg = registry_config(manager, task.name)
        assert cfg is not None, f"{task.name} is not a task of lm-eval's registry"
        names, _ = config_metrics(cfg)
        assert task.metric in names, (task.name, task.metric, names)
        if cfg.get("unsafe_code"):
            assert suite.eval.confirm_run_unsafe_code and role == "general"
    categories = {t.category for t in suite.tasks.general}
    assert categories == {"qa", "reasoning", "math", "code"}
    gate, _ = suite_gate(suite)
    assert {r.category for r in gate.rules} == categories
    assert suite.train.dtype == suite.eval.dtype == "bfloat16"
    chat = name == "medical-qwen-chat.yaml"
    assert suite.eval.apply_chat_template is chat and suite.train.chat_template is chat


def test_config_metrics_names_them_as_the_results_do():
    """Filters and Python-function metrics as forgetbench names lm-eval's results."""
    from forgetbench.eval.harness import _task_manager, config_metrics, registry_config

    manager = _task_manager((), True)
    assert config_metrics(registry_config(manager, "gsm8k")) == (
        ["exact_match,strict-match", "exact_match,flexible-extract"], False)
    assert config_metrics(registry_config(manager, "hellaswag")) == (["acc", "acc_norm"], False)
    assert config_metrics(registry_config(manager, "mbpp")) == (["pass_at_1"], True)
    # humaneval's pass_at_k returns {"pass@1": ...}: its results are named pass@1, so a
    # function metric leaves the name open
    assert config_metrics(registry_config(manager, "humaneval")) == (["pass_at_k,create_test"], True)
    assert registry_config(manager, "mmlu") is None  # a group: its metrics come with its scores


@pytest.mark.parametrize("name", sorted(REAL))
def test_plan_reads_the_config_alone(offline_hub, capsys, name):
    from forgetbench.planner import shape_of

    model, cfg, params = REAL[name]
    assert shape_of(model).params == params
    assert main(["plan", str(SUITES / name)]) == 0
    out = capsys.readouterr().out
    basis = (f"{params / 1e9:.3g}B parameters (d {cfg['hidden_size']}, {cfg['num_hidden_layers']} layers, "
             f"MLP {cfg['intermediate_size'] / cfg['hidden_size']:.3g}·d, {cfg['num_key_value_heads']} of "
             f"{cfg['num_attention_heads']} heads for keys/values, vocab {cfg['vocab_size']})")
    assert basis in out and "planned: fits" in out
    suite = load_suite(SUITES / name)
    assert f"total (per GPU on {suite.train.nproc})" in out


def test_plan_without_the_config_names_the_download(offline_hub, tmp_path, capsys):
    for repo in offline_hub.iterdir():  # an empty cache
        for f in repo.rglob("config.json"):
            f.unlink()
    assert main(["plan", str(SUITES / "medical-llama.yaml")]) == 2
    err = _one_line(capsys.readouterr().err)
    assert "model: cannot load meta-llama/Llama-3.2-1B" in err
    assert "hf download meta-llama/Llama-3.2-1B config.json" in err
    assert "forgetbench cache " + str(SUITES / "medical-llama.yaml") in err


@pytest.mark.parametrize("name", sorted(REAL))
def test_dry_run_lists_the_points_offline_and_writes_nothing(offline_hub, tmp_path, capsys, name):
    model = REAL[name][0]
    runs = tmp_path / "runs"
    source = str(SUITES / name)
    assert main(["sweep", source, "--runs-dir", str(runs), "--dry-run"]) == 0
    out = capsys.readouterr().out
    suite = load_suite(source)
    points = suite.points()
    assert len(points) == 17
    assert f"suite {suite.name}: {len(points)} points" in out
    listed = [line for line in out.splitlines() if line.startswith("  ") and line.endswith("[pending]")]
    assert [line.split("  ")[2] for line in listed] == [p.label() for p in points]
    assert f"to run: {len(points)} to train and evaluate" in out
    # the training data are hub datasets not cached here: nothing that reads them runs
    assert ("not checked without downloading (the sweep checks it first): the training data against the "
            "evaluation items and the held-out rows against the training data (leakage); sweep.epochs and "
            f"train.max_seq_len against the training data as {model}'s tokenizer reads it") in out
    assert f"forgetbench cache {source}  ({model}'s weights and tokenizer, not in the local" in out
    assert f"the training data's {suite.data.target}, " in out
    assert not runs.exists()


def test_dry_run_refuses_a_metric_the_task_does_not_report(offline_hub, tmp_path, capsys):
    source = str(SUITES / "medical-llama.yaml")
    args = ["sweep", source, "--runs-dir", str(tmp_path / "runs"), "--dry-run"]
    assert main(args + ["--set", "tasks.general.0.metric=acc_nrom"]) == 2
    err = _one_line(capsys.readouterr().err)
    assert (f"{source}: tasks.general[0].metric: 'acc_nrom' is not a metric lm-eval reports for task "
            "'arc_challenge'; valid: acc, acc_norm") in err
    # a Python-function metric reports names of its own: humaneval's pass@1 passes
    humaneval = "tasks.general.4={name: humaneval, category: code, metric: 'pass@1,create_test'}"
    assert main(args + ["--set", humaneval]) == 0
    capsys.readouterr()


def test_code_tasks_need_both_opt_ins(offline_hub, tmp_path, capsys, monkeypatch):
    source = str(SUITES / "medical-llama.yaml")
    args = ["sweep", source, "--runs-dir", str(tmp_path / "runs"), "--dry-run"]
    assert main(args + ["--set", "eval.confirm_run_unsafe_code=false"]) == 2
    err = _one_line(capsys.readouterr().err)
    assert "tasks.general[4]: task 'mbpp' executes the code the model writes; set eval.confirm_run_unsafe_code" in err
    monkeypatch.delenv("HF_ALLOW_CODE_EVAL")
    assert main(args) == 2
    assert "export HF_ALLOW_CODE_EVAL=1" in _one_line(capsys.readouterr().err)


@pytest.mark.parametrize("name", sorted(REAL))
def test_sweep_stops_before_writing_when_the_model_is_not_cached(offline_hub, tmp_path, capsys, name):
    model = REAL[name][0]
    runs = tmp_path / "runs"
    source = str(SUITES / name)
    assert main(["sweep", source, "--runs-dir", str(runs)]) == 2
    err = _one_line(capsys.readouterr().err)
    assert (f"{source}: model: {model}: its weights and tokenizer are not in the local Hugging Face "
            f"cache ({offline_hub}) and could not be downloaded (HF_HUB_OFFLINE is set)") in err
    assert f"run `forgetbench cache {source}` (or `hf download {model} --exclude 'original/*'`)" in err
    assert not runs.exists()


def test_cache_without_the_hub_names_itself(offline_hub, capsys):
    source = str(SUITES / "medical-llama.yaml")
    assert main(["cache", source]) == 2
    err = _one_line(capsys.readouterr().err)
    assert "could not load the documents of task 'medqa_4options'" in err
    assert "OfflineModeIsEnabled" in err
    assert f"the hub cannot be reached: where it can, run `forgetbench cache {source}`" in err


def test_what_the_cache_lacks(offline_hub):
    """Weights whole (every shard the index names) and a tokenizer: what a sweep loads."""
    from forgetbench.models import missing_from_cache

    model = "org/sharded"
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    files = {"config.json": "{}", "model.safetensors.index.json": json.dumps(index),
             "model-00001-of-00002.safetensors": "", "tokenizer.json": "{}"}
    _cache_configs(offline_hub, {model: files})
    assert missing_from_cache(model) == ["weights"]
    snapshot = offline_hub / "models--org--sharded" / "snapshots" / SNAPSHOT
    (snapshot / "model-00002-of-00002.safetensors").write_text("")
    assert missing_from_cache(model) == []
    (snapshot / "tokenizer.json").unlink()
    assert missing_from_cache(model) == ["tokenizer"]
    assert missing_from_cache("org/absent") == ["config", "weights", "tokenizer"]
    assert missing_from_cache("builtin:tiny-llama") == []


def test_a_function_metric_may_report_other_names(tmp_path):
    """A task whose metric is a Python function returning a dict (as humaneval's pass_at_k
    does) reports the dict's keys: a declared one is not refused for want of the function's name."""
    from forgetbench.config import TasksSpec
    from forgetbench.eval.harness import eval_items

    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "metrics.py").write_text("def scored(references, predictions):\n    return {'score@1': 1.0}\n")
    (folder / "items.jsonl").write_text(json.dumps({"q": "2+2=", "a": "4"}) + "\n")
    (folder / "dict_metric.yaml").write_text(yaml.safe_dump({
        "task": "dict_metric", "dataset_path": "json", "output_type": "generate_until",
        "dataset_kwargs": {"data_files": {"test": str(folder / "items.jsonl")}}, "test_split": "test",
        "doc_to_text": "{{q}}", "doc_to_target": "{{a}}",
        "metric_list": [{"metric": "FUNCTION", "aggregation": "mean", "higher_is_better": True}]}
    ).replace("FUNCTION", "!function metrics.scored"))
    tasks = TasksSpec(include_path=(folder, SUITES / "tasks"),
                      target=[{"name": "dict_metric", "metric": "score@1"}],
                      general=[{"name": "fb_capitals", "category": "qa", "metric": "acc"}])
    assert eval_items(tasks)["dict_metric"] == [("2+2=", "4")]


def test_cache_of_a_suite_on_this_machine_reads_it_all(offline_hub, capsys):
    """The default suite (the embedded model, bundled tasks) needs no hub: `cache` loads every
    task's documents through lm-eval, reads the data, and is done."""
    assert main(["cache", str(SUITES / "medical.yaml")]) == 0
    out = capsys.readouterr().out
    assert "tasks: 4 (581 documents) loaded by lm-eval" in out and "model:" not in out


@pytest.mark.parametrize("name", sorted(REAL))
def test_the_suites_data_templates_render_rows_shaped_as_their_hub_datasets(name, tmp_path):
    """The hub datasets cannot be read here: rows with their columns (MedMCQA: question, opa-opd,
    cop 0-3, exp or null; Dolly: instruction, context, response; wikitext: text) stand in."""
    import pandas as pd

    from forgetbench.datafiles import read_rows

    pd.DataFrame({"question": ["Which vitamin deficiency causes scurvy?"] * 2, "opa": ["A"] * 2,
                  "opb": ["C"] * 2, "opc": ["D"] * 2, "opd": ["K"] * 2, "cop": [1, 1],
                  "exp": ["Ascorbic acid is needed for collagen.", None]}).to_parquet(tmp_path / "medmcqa.parquet")
    pd.DataFrame({"instruction": ["Name a prime.", "Summarise."], "context": ["", "Rome is old."],
                  "response": ["7", "Old city."]}).to_parquet(tmp_path / "dolly.parquet")
    wiki = pd.DataFrame({"text": [" = Valkyria = \n", "", " The game began in 2010 .\n"]})
    wiki.to_parquet(tmp_path / "wiki.parquet")
    local = {"openlifescienceai/medmcqa": "medmcqa", "databricks/databricks-dolly-15k": "dolly",
             "Salesforce/wikitext": "wiki"}
    suite = load_suite(SUITES / name)
    for field in ("target", "validation", "replay", "general_heldout"):
        source = getattr(suite.data, field)
        stand_in = source.model_copy(update={"dataset": str(tmp_path / f"{local[source.dataset]}.parquet"),
                                             "split": "train", "name": None})
        rows = read_rows(stand_in)
        if local[source.dataset] == "medmcqa":
            first, second = rows
            assert first["prompt"].removeprefix("Question: ").startswith("Which vitamin deficiency causes scurvy?")
            assert "A. A\nB. C\nC. D\nD. K" in first["prompt"]
            if suite.train.chat_template:  # the answer with its explanation, none when it has none
                assert first["completion"] == "The answer is B. Ascorbic acid is needed for collagen."
                assert second["completion"] == "The answer is B."
            else:  # the letter, as the medmcqa task scores it
                assert first["prompt"].endswith("Answer:") and first["completion"] == second["completion"] == " B"
        elif local[source.dataset] == "dolly":
            assert [r["prompt"] for r in rows] == ["Name a prime.", "Summarise.\n\nRome is old."]
            assert [r["completion"] for r in rows] == ["7", "Old city."]
        else:  # wikitext's empty lines are skipped
            assert rows == [{"text": " = Valkyria = \n"}, {"text": " The game began in 2010 .\n"}]
