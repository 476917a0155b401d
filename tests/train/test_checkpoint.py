import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from forgetbench.config import Point, load_suite
from forgetbench.store import temporary_name
from forgetbench.train import checkpoint
from forgetbench.train.recipe import train_point
from tests.conftest import suite_dict


def test_only_complete_checkpoints_are_resumed_from(tmp_path):
    (tmp_path / "step_0000004").mkdir()
    (tmp_path / "step_0000004" / checkpoint.MARKER).write_text("{}")
    (tmp_path / "step_0000009").mkdir()                   # no marker: cut short by a crash
    (tmp_path / temporary_name("step_0000012", "partial")).mkdir()
    assert checkpoint.latest(tmp_path) == tmp_path / "step_0000004"
    assert checkpoint.latest(tmp_path / "absent") is None


def log_of(path):
    return [json.loads(l) for l in path.read_text().splitlines()]


def test_n_steps_straight_equal_half_then_resume_then_half(write_suite, tiny_model_dir, tmp_path):
    suite = load_suite(write_suite(suite_dict(**{"model": str(tiny_model_dir), "train.batch_size": 8})))
    point = Point(lr=1e-3, epochs=1, mix_ratio=0.1, regularizer="none", lam=0.0)
    kw = dict(base_model_dir=tiny_model_dir)
    train_point(suite, point, out_dir=tmp_path / "a", log_path=tmp_path / "a.jsonl", **kw)
    ckpt = tmp_path / "ckpt"
    first = train_point(suite, point, out_dir=None, log_path=tmp_path / "b.jsonl",
                        checkpoint_dir=ckpt, stop_after=20, **kw)
    assert first["stopped_at"] == 20 and checkpoint.latest(ckpt).name == "step_0000020"
    second = train_point(suite, point, out_dir=tmp_path / "b", log_path=tmp_path / "b.jsonl",
                         checkpoint_dir=ckpt, **kw)
    assert second["resumed_from_step"] == 20 and second["steps"] >= 40
    straight, resumed = log_of(tmp_path / "a.jsonl"), log_of(tmp_path / "b.jsonl")
    assert [r["step"] for r in resumed] == [r["step"] for r in straight]
    # the held-out losses and the KL to the base model resume too (the base is measured
    # before the checkpoint is loaded)
    for key in ("loss", "val_loss", "general_loss", "kl"):
        assert [r.get(key) for r in resumed] == [r.get(key) for r in straight], key
    assert straight[0]["step"] == 0 and straight[0]["kl"] == 0.0 and straight[-1]["kl"] > 0
    assert resumed[-1]["tokens"] == straight[-1]["tokens"]
    a, b = (AutoModelForCausalLM.from_pretrained(tmp_path / n) for n in "ab")
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    assert not ckpt.exists()  # removed once the model is exported


def cli_train(suite, point, runs, nproc, *extra):
    cmd = [sys.executable, "-m", "forgetbench", "train", str(suite), "--point", point,
           "--runs-dir", str(runs), "--nproc", str(nproc), *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.slow
def test_a_two_process_run_stopped_midway_resumes_on_one_process(write_suite, tiny_model_dir, tmp_path):
    from forgetbench.store import RunStore
    from forgetbench.sweep import plan

    raw = suite_dict(**{"model": str(tiny_model_dir), "train.batch_size": 8})
    raw["sweep"] = {"lr": [1e-3], "epochs": [1], "mix_ratio": [0.1]}
    path = write_suite(raw)
    [pp] = plan(load_suite(path))
    cli_train(path, pp.id, tmp_path / "straight", 1)
    out = cli_train(path, pp.id, tmp_path / "split", 2, "--stop-after", "20")
    assert "stopped with a checkpoint after step 20" in out
    store = RunStore(tmp_path / "split" / "medical")
    assert store.states()[pp.id].status == "paused"
    assert not store.model_dir(pp.id).exists()
    out = cli_train(path, pp.id, tmp_path / "split", 1)  # resharded from 2 processes to 1
    assert "resumed from step 20" in out
    assert store.states()[pp.id].status == "trained"
    straight = log_of(tmp_path / "straight" / "medical" / "points" / pp.id / "train_log.jsonl")
    resumed = log_of(store.point_dir(pp.id) / "train_log.jsonl")
    assert len(resumed) == len(straight) >= 40
    for a, b in zip(straight, resumed):
        for key in ("loss", "general_loss", "kl"):
            assert b.get(key) == (None if a.get(key) is None else
                                  pytest.approx(a[key], rel=1e-5, abs=1e-7)), (key, a["step"])
    m1 = AutoModelForCausalLM.from_pretrained(tmp_path / "straight" / "medical" / "points" / pp.id / "model")
    m2 = AutoModelForCausalLM.from_pretrained(store.model_dir(pp.id))
    for p, q in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


def test_resume_continues_the_dropout_draws_of_the_uninterrupted_run(write_suite, tiny_model_dir, tmp_path):
    import shutil

    # the same tiny model with attention dropout on: each step draws from the RNG
    model = tmp_path / "dropout-model"
    shutil.copytree(tiny_model_dir, model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "attention_dropout": 0.3}))
    raw = suite_dict(**{"model": str(model), "train.batch_size": 8, "train.eval_every": None,
                        "train.track_kl": False})
    suite = load_suite(write_suite(raw))
    point = Point(lr=1e-3, epochs=1, mix_ratio=0.0, regularizer="none", lam=0.0)
    kw = dict(base_model_dir=model)
    train_point(suite, point, out_dir=None, log_path=tmp_path / "a.jsonl", **kw)
    ckpt = tmp_path / "ckpt"
    train_point(suite, point, out_dir=None, log_path=tmp_path / "b.jsonl", checkpoint_dir=ckpt,
                stop_after=10, **kw)
    train_point(suite, point, out_dir=None, log_path=tmp_path / "b.jsonl", checkpoint_dir=ckpt, **kw)
    straight, resumed = log_of(tmp_path / "a.jsonl"), log_of(tmp_path / "b.jsonl")
    assert len(resumed) == len(straight) > 10
    assert [r["loss"] for r in resumed] == [r["loss"] for r in straight]
    # without the saved RNG state the draws after step 10 differ (the check can fail)
    train_point(suite, point, out_dir=None, log_path=tmp_path / "c.jsonl", checkpoint_dir=ckpt,
                stop_after=10, **kw)
    (ckpt / "step_0000010" / "rank_0.pt").unlink()
    train_point(suite, point, out_dir=None, log_path=tmp_path / "c.jsonl", checkpoint_dir=ckpt, **kw)
    assert [r["loss"] for r in log_of(tmp_path / "c.jsonl")][10:] != [r["loss"] for r in straight][10:]
