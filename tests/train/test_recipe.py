import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from forgetbench.config import Point, load_suite
from forgetbench.train.recipe import train_point
from tests.conftest import suite_dict


@pytest.fixture
def small_suite(write_suite, tmp_path):
    def make(**train):
        rows = tmp_path / "train.jsonl"
        rows.write_text("".join(json.dumps({"prompt": f"Drug{i} is used to treat",
                                            "completion": " pain" * (1 + i % 5) + "\n"}) + "\n"
                                for i in range(32)))
        raw = suite_dict(**{"data.target": str(rows)})
        raw["train"].update(train)
        return load_suite(write_suite(raw))
    return make


def run(suite, model_dir, tmp_path, name, **point):
    p = Point(**{"lr": 1e-3, "epochs": 1, "mix_ratio": 0.0, "regularizer": "none", "lam": 0.0, **point})
    out = tmp_path / name
    summary = train_point(suite, p, base_model_dir=model_dir, out_dir=out, log_path=out / "log.jsonl")
    log = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    return summary, log, AutoModelForCausalLM.from_pretrained(out)


def test_full_fine_tuning_updates_every_parameter_and_logs_each_step(small_suite, tiny_model_dir, tmp_path):
    suite = small_suite(batch_size=8, warmup_ratio=0.25)
    summary, log, tuned = run(suite, tiny_model_dir, tmp_path, "a", epochs=2)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert summary["steps"] == len(log) == 8            # 64 examples / batch 8
    assert [r["step"] for r in log] == list(range(1, 9))
    assert {"loss", "lr", "grad_norm", "tokens", "tokens_per_s", "mfu", "peak_mem_gb"} <= set(log[0])
    assert log[1]["lr"] == pytest.approx(1e-3)          # warmup of 2 steps reaches the peak
    assert log[-1]["lr"] == pytest.approx(1e-4)         # cosine floor: 0.1 × peak
    assert log[-1]["loss"] < log[0]["loss"]
    for (name, p0), p1 in zip(base.named_parameters(), tuned.parameters()):
        assert not torch.equal(p0, p1), f"{name} did not train"


def test_gradient_accumulation_matches_one_large_batch(small_suite, tiny_model_dir, tmp_path):
    # rows of different lengths: a mean of per-micro-batch means would differ from the
    # token-weighted loss of the whole step
    # batch_size is the global batch: grad_accum only splits it into micro-batches
    big = small_suite(batch_size=8, grad_accum=1, max_grad_norm=None)
    _, log_big, m_big = run(big, tiny_model_dir, tmp_path, "big")
    small = small_suite(batch_size=8, grad_accum=2, max_grad_norm=None)
    _, log_small, m_small = run(small, tiny_model_dir, tmp_path, "small")
    assert len(log_big) == len(log_small) == 4
    for a, b in zip(log_big, log_small):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    for p, q in zip(m_big.parameters(), m_small.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


def test_seeded_runs_repeat_and_l2_with_lambda_zero_is_plain_fine_tuning(small_suite, tiny_model_dir, tmp_path):
    suite = small_suite(batch_size=8)
    _, log1, m1 = run(suite, tiny_model_dir, tmp_path, "r1")
    _, log2, m2 = run(suite, tiny_model_dir, tmp_path, "r2", regularizer="l2", lam=0.0)
    assert [r["loss"] for r in log1] == [r["loss"] for r in log2]
    for p, q in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(p, q)


def test_strong_l2_sp_keeps_weights_near_the_base(small_suite, tiny_model_dir, tmp_path):
    suite = small_suite(batch_size=8, max_grad_norm=None)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    _, _, free = run(suite, tiny_model_dir, tmp_path, "free")
    _, log, held = run(suite, tiny_model_dir, tmp_path, "held", regularizer="l2", lam=1e4)

    def dist(m):
        with torch.no_grad():
            return sum(float((p - q).square().sum())
                       for p, q in zip(m.parameters(), base.parameters())) ** 0.5

    assert dist(held) < 0.2 * dist(free)
    assert log[-1]["penalty"] > 0


def test_a_max_seq_len_that_cuts_every_completion_is_a_user_error(small_suite, tiny_model_dir, tmp_path):
    from forgetbench.errors import ForgetbenchError

    suite = small_suite(batch_size=8, max_seq_len=3)
    with pytest.raises(ForgetbenchError, match="train.max_seq_len: 3 tokens leave no completion"):
        run(suite, tiny_model_dir, tmp_path, "short")


def test_activation_checkpointing_changes_memory_not_results(small_suite, tiny_model_dir, tmp_path):
    _, plain, m1 = run(small_suite(batch_size=8), tiny_model_dir, tmp_path, "plain")
    _, ckpt, m2 = run(small_suite(batch_size=8, activation_checkpointing=True), tiny_model_dir, tmp_path, "ac")
    for a, b in zip(plain, ckpt):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-6)
    for p, q in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(p, q)


@pytest.mark.slow
def test_compiled_blocks_train_like_eager_ones(small_suite, tiny_model_dir, tmp_path):
    _, eager, m1 = run(small_suite(batch_size=16), tiny_model_dir, tmp_path, "eager")
    _, compiled, m2 = run(small_suite(batch_size=16, compile=True), tiny_model_dir, tmp_path, "compiled")
    assert len(eager) == len(compiled) == 2
    for a, b in zip(eager, compiled):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)  # kernel fusion reorders fp32 sums
    for p, q in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
