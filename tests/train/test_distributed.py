"""FSDP2 under torchrun on CPU (gloo): sharded training must equal single-process training."""
import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from forgetbench.train.distributed import block_classes
from forgetbench.train.recipe import rank_micro_batches
from tests.conftest import suite_dict


@pytest.mark.parametrize("family, block", [
    ("llama", "LlamaDecoderLayer"), ("qwen2", "Qwen2DecoderLayer"),
    ("mistral", "MistralDecoderLayer"), ("gpt2", "GPT2Block")])
def test_fsdp_units_are_found_from_the_model(family, block):
    from transformers import AutoConfig

    kw = ({"n_layer": 2, "n_embd": 16, "n_head": 2, "vocab_size": 64} if family == "gpt2" else
          {"num_hidden_layers": 2, "hidden_size": 16, "intermediate_size": 32,
           "num_attention_heads": 2, "num_key_value_heads": 2, "vocab_size": 64})
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(family, **kw))
    assert {c.__name__ for c in block_classes(model)} == {block}


def test_ranks_split_a_global_batch_into_equal_counts_of_micro_batches():
    chunk = list(range(10))
    parts = [rank_micro_batches(chunk, r, 2, 3) for r in range(2)]
    assert [len(p) for p in parts] == [3, 3]          # same number of forward passes per rank
    assert sorted(x for p in parts for mb in p for x in mb) == chunk
    assert rank_micro_batches([7], 1, 2, 2) == [[], []]  # a rank with nothing left still steps


def train(suite, point, runs, nproc, torchrun=False):
    args = ["train", str(suite), "--point", point, "--runs-dir", str(runs)]
    if torchrun:  # launched by hand: FSDP2 even over one process
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "forgetbench", *args]
    else:  # forgetbench starts torchrun itself when nproc > 1
        cmd = [sys.executable, "-m", "forgetbench", *args, "--nproc", str(nproc)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert ("(FSDP2)" in done.stdout) == (nproc > 1 or torchrun), done.stdout
    d = runs / "medical" / "points" / point
    log = [json.loads(l) for l in (d / "train_log.jsonl").read_text().splitlines()]
    return log, AutoModelForCausalLM.from_pretrained(d / "model")


@pytest.mark.slow
@pytest.mark.parametrize("mitigation", [
    {"regularizer": ["none"]},
    # EWC (Fisher estimated sharded, the sharded anchor penalty that L2-SP shares),
    # discriminative lrs and early stopping in one point
    {"regularizer": ["ewc"], "lam": [100.0], "regularizer_form": ["coupled"], "xi": [2.6], "patience": [1]},
    # the decoupled pull on each rank's shard, at each depth's own lr
    {"regularizer": ["ewc"], "lam": [1.0e5], "regularizer_form": ["decoupled"], "xi": [2.6]},
], ids=["plain", "ewc-xi-patience", "decoupled-ewc-xi"])
def test_two_fsdp_processes_match_one_process(write_suite, tiny_model_dir, tmp_path, mitigation):
    from forgetbench.config import load_suite
    from forgetbench.sweep import plan

    raw = suite_dict(**{"model": str(tiny_model_dir), "train.batch_size": 8,
                        "train.ewc": {"samples": 32}})
    raw["sweep"] = {"lr": [1e-3], "epochs": [1], "mix_ratio": [0.1], **mitigation}
    path = write_suite(raw)
    [pp] = plan(load_suite(path))
    log1, m1 = train(path, pp.id, tmp_path / "one", 1)
    runs = {"two": train(path, pp.id, tmp_path / "two", 2)}
    if mitigation["regularizer"] == ["none"]:  # FSDP2 over one process: one GPU's sharded path
        runs["torchrun-one"] = train(path, pp.id, tmp_path / "torchrun-one", 1, torchrun=True)
    for name, (log2, m2) in runs.items():
        _assert_same_training(log1, m1, log2, m2, name)


def _assert_same_training(log1, m1, log2, m2, name):
    assert len(log1) == len(log2) >= 20, name
    # Same global batches, same normalisation: only the order of fp32 sums differs (gradient
    # all-reduce over 2 ranks), which moves losses by ~1e-6 here; 1e-5 relative is far below
    # any real difference (one wrong token count or a per-rank mean shifts the loss by >1e-2).
    for a, b in zip(log1, log2):
        for key in ("loss", "val_loss", "general_loss", "kl"):
            assert b.get(key) == (None if a.get(key) is None else
                                  pytest.approx(a[key], rel=1e-5, abs=1e-7)), (name, key, a["step"])
        assert b.get("penalty") == (None if a.get("penalty") is None else
                                    pytest.approx(a["penalty"], rel=1e-4, abs=1e-9))
        assert b.get("tokens") == a.get("tokens")
    for p, q in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")


@pytest.mark.slow
def test_the_gathered_export_reloads_to_the_in_memory_fsdp_model(tiny_model_dir, tmp_path):
    from pathlib import Path

    worker = Path(__file__).with_name("fsdp_export_worker.py")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", str(worker), str(tiny_model_dir), str(tmp_path)],
                          capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "PYTHONPATH": str(Path(__file__).parents[2])})
    assert done.returncode == 0, done.stderr[-2000:]
    saved = torch.load(tmp_path / "logits.pt")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    with torch.no_grad():
        logits = reloaded(**saved["inputs"]).logits
    # evaluation is a deterministic function of these logits: equal logits, equal scores
    torch.testing.assert_close(logits, saved["logits"], rtol=1e-5, atol=1e-5)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        assert not torch.allclose(base(**saved["inputs"]).logits, logits, atol=1e-3)


@pytest.mark.slow
def test_bf16_fsdp_computes_in_bf16_and_reduces_to_the_single_process_result(write_suite, tiny_model_dir, tmp_path):
    """FSDP's mixed precision (bf16 parameters for compute, fp32 gradient reduction, fp32
    sharded master weights) against one process's bf16 autocast: both follow the fp32 run to
    bf16's precision, and neither is the fp32 run."""
    from forgetbench.config import load_suite
    from forgetbench.sweep import plan
    from forgetbench.train.recipe import train_point

    losses = {}
    for dtype in ("float32", "bfloat16"):
        raw = suite_dict(**{"model": str(tiny_model_dir), "train.batch_size": 8, "train.dtype": dtype,
                            "train.eval_every": None, "train.track_kl": False})
        raw["sweep"] = {"lr": [1e-3], "epochs": [1], "mix_ratio": [0.0]}
        path = write_suite(raw)
        suite = load_suite(path)
        [pp] = plan(suite)
        log = tmp_path / f"{dtype}.jsonl"
        train_point(suite, pp.point, base_model_dir=tiny_model_dir, out_dir=None, log_path=log)
        losses[dtype, 1] = [json.loads(line)["loss"] for line in log.read_text().splitlines()]
    two, model = train(path, pp.id, tmp_path / "two", 2)
    losses["bfloat16", 2] = [r["loss"] for r in two]
    fp32 = losses["float32", 1]
    for run in (losses["bfloat16", 1], losses["bfloat16", 2]):
        assert run != fp32 and run == pytest.approx(fp32, rel=2e-3)  # measured: <= 3e-4
    assert all(p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.slow
def test_only_rank_0_reads_the_weights_into_the_sharded_model(tiny_model_dir, tmp_path):
    """The embedded model (tied embeddings), an untied Llama, Qwen2 and GPT-2: an empty
    sharded model filled from rank 0 equals the checkpoint, tensor for tensor."""
    import os
    from pathlib import Path

    from transformers import AutoConfig

    dirs = [str(tiny_model_dir)]
    for family, kw in [
        ("llama", {"num_hidden_layers": 2, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4,
                   "num_key_value_heads": 2, "vocab_size": 64, "tie_word_embeddings": False}),
        ("qwen2", {"num_hidden_layers": 2, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4,
                   "num_key_value_heads": 2, "vocab_size": 64}),
        ("gpt2", {"n_layer": 2, "n_embd": 32, "n_head": 4, "vocab_size": 64, "n_positions": 32})]:
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(AutoConfig.for_model(family, **kw)).save_pretrained(tmp_path / family)
        dirs.append(str(tmp_path / family))
    worker = Path(__file__).with_name("fsdp_load_worker.py")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(worker), *dirs], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
    assert done.returncode == 0, done.stderr[-3000:]
