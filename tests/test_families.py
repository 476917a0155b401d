"""Model families through forgetbench's own path: a tiny random-weight Llama, Qwen2, Mistral,
Gemma 3, Phi-3 and GPT-2 (tests/families.py), each with its own tokenizer, trained on one
process and on two FSDP2 processes, exported, reloaded and evaluated.

The two-process runs of all families share one torchrun launch (families_fsdp_worker.py),
each point trained by ``sweep.train_one`` as ``forgetbench train`` does. The Phi-3 folder
names code of its own in ``auto_map``, as Phi-3's hub checkpoints do, and that code fails if
imported: these runs also show that trust_remote_code stays off unless a suite sets it.
"""
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from forgetbench.config import load_suite
from forgetbench.datafiles import read_rows
from forgetbench.eval.harness import evaluate
from forgetbench.store import RunStore, atomic_write_json, read_jsonl
from forgetbench.sweep import plan, train_one
from forgetbench.train import data as train_data
from forgetbench.train.distributed import Dist, block_classes
from forgetbench.train.heldout import heldout_pass
from forgetbench.train.recipe import discriminative_groups
from tests.conftest import REPO, suite_dict
from tests.families import FAMILIES

EVAL_LIMIT = 4  # items per task: enough to score every bundled task, generation included


def family_suite(model_dir: Path, family: str) -> dict:
    """The default suite's data, tasks and settings on a family's model: one point of
    5 optimizer steps (31 target rows, 8 replay rows, global batch 8), held-out losses and
    the KL to the base model at step 0 and at the end."""
    raw = suite_dict(model=str(model_dir), name=family)
    raw["train"].update({"batch_size": 8, "eval_every": 100})
    raw["eval"]["limit"] = EVAL_LIMIT
    raw["sweep"] = {"lr": [3e-3], "epochs": [0.1], "mix_ratio": [0.2]}
    return raw


@pytest.fixture(scope="module")
def family_suites(family_model_dir, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("family-suites")
    paths = {}
    for family in FAMILIES:
        paths[family] = folder / f"{family}.yaml"
        paths[family].write_text(yaml.safe_dump(family_suite(family_model_dir(family), family), sort_keys=False))
    return paths


@pytest.fixture(scope="module")
def fsdp_runs(family_suites, tmp_path_factory) -> Path:
    """Every family's point trained on two FSDP2 processes (gloo), in one torchrun launch;
    the parent of their run directories."""
    runs = tmp_path_factory.mktemp("fsdp-runs")
    point_files = []
    for path in family_suites.values():
        suite = load_suite(path)
        [pp] = plan(suite)
        point_files.append(RunStore(runs / suite.name).point_dir(pp.id) / "point.json")
        atomic_write_json(point_files[-1], pp.record(suite))  # as `forgetbench train SUITE --point` writes it
    worker = Path(__file__).with_name("families_fsdp_worker.py")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(worker), *map(str, point_files)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-3000:]
    return runs


def _reload(model_dir: Path):
    model, info = AutoModelForCausalLM.from_pretrained(model_dir, output_loading_info=True)
    # every tensor of the export is read back, none is left at its fresh initialisation
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    return model.eval()


def _val_loss(model, model_dir: Path, suite) -> float:
    """The mean token loss of ``model`` on the suite's validation rows, as training measures it."""
    tok = AutoTokenizer.from_pretrained(model_dir)
    rows = train_data.tokenize(read_rows(suite.data.validation), tok, suite.train.max_seq_len)
    cpu = torch.device("cpu")
    loss, _, _ = heldout_pass(model, rows, batch_size=suite.train.eval_batch_size, pad_id=tok.pad_token_id,
                              device=cpu, autocast=torch.autocast("cpu", enabled=False), dist=Dist(0, 1, cpu))
    return loss


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_a_family_trains_on_one_and_two_fsdp_processes_exports_reloads_and_evaluates(
        family, family_model_dir, family_suites, fsdp_runs, tmp_path):
    suite = load_suite(family_suites[family])
    [pp] = plan(suite)
    base_dir = family_model_dir(family)

    # one process: what `forgetbench train` runs
    store = RunStore(tmp_path / "runs" / suite.name)
    summary = train_one(suite, pp, store)
    log = read_jsonl(store.point_dir(pp.id) / "train_log.jsonl")
    assert summary["steps"] == len(log) - 1 == 5 and not summary["sharded"]
    # it learns the target: the same validation rows lose > 0.2 nats (measured: 0.56-0.77)
    assert log[-1]["val_loss"] < log[0]["val_loss"] - 0.2
    assert log[0]["kl"] == 0.0 < log[-1]["kl"]
    base, tuned = _reload(base_dir), _reload(store.model_dir(pp.id))
    for (name, p0), p1 in zip(base.named_parameters(), tuned.parameters()):
        assert not torch.equal(p0, p1), f"{name} did not train"
    if base.config.tie_word_embeddings:  # Gemma, GPT-2: the head is the embedding table, still
        assert tuned.get_output_embeddings().weight is tuned.get_input_embeddings().weight

    # the export is the model trained in memory: its validation loss is the one measured there
    assert _val_loss(tuned, store.model_dir(pp.id), suite) == pytest.approx(log[-1]["val_loss"], rel=1e-5)

    # evaluated by lm-eval on every bundled task, as the base model is, with the same tokenization
    scores = evaluate(store.model_dir(pp.id), suite.tasks, suite.eval)
    base_scores = evaluate(base_dir, suite.tasks, suite.eval)
    for task, role in suite.all_tasks():
        result = scores["tasks"][task.name]
        assert result["n"] == EVAL_LIMIT and result["metrics"], (task.name, role)
        assert all(math.isfinite(m["value"]) for m in result["metrics"].values()), result["metrics"]
    assert scores["tokenization"] == base_scores["tokenization"]
    # lm-eval sees a BOS exactly where training put one: where the family's tokenizer adds it
    tok = AutoTokenizer.from_pretrained(store.model_dir(pp.id))
    [example] = train_data.tokenize([{"prompt": "The capital of France is", "completion": " Paris"}], tok, 64)
    assert scores["tokenization"]["add_bos_token"] == (example.input_ids[0] == tok.bos_token_id)
    assert (example.input_ids[0] == tok.bos_token_id) == (family not in ("qwen2", "gpt2"))  # as their hub tokenizers

    # two FSDP2 processes: the same training. Only the order of fp32 sums differs (the
    # gradient all-reduce), which moves losses by ~1e-6; the tolerances of test_distributed.py
    d2 = RunStore(fsdp_runs / suite.name).point_dir(pp.id)
    log2 = read_jsonl(d2 / "train_log.jsonl")
    assert len(log2) == len(log)
    for a, b in zip(log, log2):
        for key in ("loss", "val_loss", "general_loss", "kl"):
            assert b.get(key) == (None if a.get(key) is None else
                                  pytest.approx(a[key], rel=1e-5, abs=1e-7)), (key, a["step"])
        assert b.get("tokens") == a.get("tokens")
    sharded = _reload(d2 / "model")  # gathered from the shards: the sharded model in memory
    assert _val_loss(sharded, d2 / "model", suite) == pytest.approx(log2[-1]["val_loss"], rel=1e-5)
    # each tensor lies within 0.1% of its training step of the one-process one (measured:
    # <= 1.4e-4). Not element by element: where a first gradient is ~1e-8, Adam's eps, its
    # step lr·g/(|g| + eps) turns the rounding of g into a visible part of a step (one weight
    # of Gemma's up_proj, whose gradient is 3e-8 against a median of 7e-3, ends 3e-5 apart)
    with torch.no_grad():
        for (name, p), q, p0 in zip(tuned.named_parameters(), sharded.parameters(), base.parameters()):
            assert float((p - q).norm()) <= 1e-3 * float((p - p0).norm()), name
    if base.config.tie_word_embeddings:
        assert sharded.get_output_embeddings().weight is sharded.get_input_embeddings().weight


@pytest.mark.parametrize("family", FAMILIES)
def test_a_familys_decoder_blocks_are_its_fsdp_units_and_its_depths(family, family_model_dir):
    """Found from the model itself, whatever the family calls its layers: the FSDP units, and
    the depths of discriminative learning rates (embeddings 0, blocks 1..L, the rest L + 1)."""
    model = AutoModelForCausalLM.from_pretrained(family_model_dir(family))
    blocks = [m for m in model.modules() if isinstance(m, tuple(block_classes(model)))]
    assert len(blocks) == model.config.num_hidden_layers == 2
    groups = discriminative_groups(model, 2.6)
    assert [g["depth"] for g in groups] == [0, 1, 2, 3]
    params = [p for g in groups for p in g["params"]]
    assert len(params) == len({id(p) for p in params}) == len(list(model.parameters()))
    assert any(p is model.get_input_embeddings().weight for p in groups[0]["params"])
    for k, block in enumerate(blocks, 1):
        assert {id(p) for p in block.parameters()} == {id(p) for p in groups[k]["params"]}
    if not model.config.tie_word_embeddings:  # an untied head trains at the top's rate
        assert any(p is model.get_output_embeddings().weight for p in groups[-1]["params"])
