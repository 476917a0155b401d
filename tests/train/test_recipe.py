import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from forgetbench.config import Point, load_suite
from forgetbench.datafiles import read_rows
from forgetbench.train import checkpoint
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
        raw["train"].update({"eval_every": None, "track_kl": False, **train})
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
    for form in ("coupled", "decoupled"):
        _, log2, m2 = run(suite, tiny_model_dir, tmp_path, form, regularizer="l2", lam=0.0,
                          regularizer_form=form)
        assert [r["loss"] for r in log1] == [r["loss"] for r in log2], form
        for p, q in zip(m1.parameters(), m2.parameters()):
            assert torch.equal(p, q), form


@pytest.mark.parametrize("regularizer", ["l2", "ewc"])
def test_a_huge_lambda_holds_the_base_weights_from_the_first_step_only_in_the_decoupled_form(
        small_suite, tiny_model_dir, tmp_path, regularizer):
    # one optimizer step at the peak lr: Adam's first step moves every weight with a gradient
    # by lr, and a penalty in the loss, 0 at θ0, cannot stop it; the decoupled pull can
    suite = small_suite(batch_size=32, max_grad_norm=None, warmup_ratio=0.0, ewc={"samples": 16})
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    lr, lam, cache = 1e-2, 1e9, tmp_path / "fisher"

    def drift(form):
        point = Point(lr=lr, epochs=1, mix_ratio=0.0, regularizer=regularizer, lam=lam,
                      regularizer_form=form, schedule="constant")
        out = tmp_path / form
        summary = train_point(suite, point, base_model_dir=tiny_model_dir, out_dir=out,
                              log_path=out / "log.jsonl", state_dir=cache)
        assert summary["steps"] == 1
        with torch.no_grad():
            return torch.cat([(p - q).abs().flatten() for p, q in
                              zip(AutoModelForCausalLM.from_pretrained(out).parameters(), base.parameters())])

    coupled, decoupled = drift("coupled"), drift("decoupled")
    assert float(coupled.max()) == pytest.approx(lr, rel=1e-3)
    assert float(coupled.median()) > 0.5 * lr
    held = torch.ones_like(decoupled, dtype=torch.bool)
    if regularizer == "ewc":  # EWC holds what the Fisher marks: lr·λ·F large (F is 0 for unseen tokens)
        state = {"fisher": {n: torch.zeros_like(p) for n, p in base.named_parameters()}}
        checkpoint.load_state(state, cache)
        held = torch.cat([f.flatten() for f in state["fisher"].values()]) * lr * lam > 20
        assert float(held.float().mean()) > 0.5
    assert float(decoupled[held].max()) < 1e-6 * lr


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


def test_discriminative_groups_scale_lr_by_depth_with_the_head_highest(tiny_model_dir):
    from forgetbench.train.recipe import discriminative_groups

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    layers = model.config.num_hidden_layers  # 2
    groups = discriminative_groups(model, 2.6)
    assert [g["depth"] for g in groups] == list(range(layers + 2))
    for g in groups:
        assert g["lr_scale"] == pytest.approx(2.6 ** -(layers + 1 - g["depth"]))
    emb = model.get_input_embeddings().weight
    assert any(p is emb for p in groups[0]["params"])           # tied head: with the embeddings
    assert any(p is model.model.norm.weight for p in groups[-1]["params"])
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert [g["lr_scale"] for g in discriminative_groups(model, 1.0)] == [1.0]


def test_a_huge_xi_freezes_the_lower_layers_and_trains_the_top(small_suite, tiny_model_dir, tmp_path):
    suite = small_suite(batch_size=8)
    _, log, tuned = run(suite, tiny_model_dir, tmp_path, "xi", xi=1e6)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        moved = {n: float((p - q).abs().max()) for (n, p), q in
                 zip(tuned.named_parameters(), base.parameters())}
    assert moved["model.norm.weight"] > 1e-4                     # top: the full lr
    assert moved["model.embed_tokens.weight"] < 1e-9             # lr / 1e18
    assert all(v < 1e-8 for n, v in moved.items() if ".layers.0." in n)
    assert log[-1]["lr"] == pytest.approx(1e-4)                  # the logged lr is the head's


def test_heldout_losses_and_kl_are_logged_from_the_base_model_on(small_suite, tiny_model_dir, tmp_path):
    suite = small_suite(batch_size=8, eval_every=3, track_kl=True)
    summary, log, _ = run(suite, tiny_model_dir, tmp_path, "curve", epochs=2)
    evals = [r for r in log if "general_loss" in r]
    assert [r["step"] for r in evals] == [0, 3, 6, 8]           # and at the last step
    assert evals[0]["kl"] == 0.0 and all(r["kl"] > 0 for r in evals[1:])
    assert evals[-1]["general_loss"] > evals[0]["general_loss"]   # it forgets general text
    assert all("val_loss" in r for r in evals)
    assert 0 < summary["eval_seconds"] < summary["train_seconds"]


def test_early_stopping_exports_the_best_validation_step(small_suite, tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    from forgetbench.train import data as train_data
    from forgetbench.train.distributed import Dist
    from forgetbench.train.heldout import heldout_pass

    # validation answers contradict the training answers: the validation loss rises as the
    # model learns, so training stops `patience` evaluations after its best step
    val = tmp_path / "val.jsonl"
    val.write_text("".join(json.dumps({"prompt": f"Drug{i} is used to treat",
                                       "completion": " fever\n"}) + "\n" for i in range(40, 48)))
    suite = small_suite(batch_size=4, eval_every=1)
    suite = suite.model_copy(update={"data": suite.data.model_copy(update={"validation": val})})
    point = Point(lr=3e-3, epochs=3, mix_ratio=0.0, regularizer="none", lam=0.0, patience=2)
    out = tmp_path / "es"
    summary = train_point(suite, point, base_model_dir=tiny_model_dir, out_dir=out,
                          log_path=out / "log.jsonl", checkpoint_dir=tmp_path / "ckpt")
    log = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["val_loss"] for r in log if r["step"] > 0}
    best = min(losses, key=losses.get)
    assert summary["stopped_early"] and summary["best_step"] == best
    assert summary["last_step"] == best + 2 < summary["steps"]
    assert log[-1]["step"] == summary["last_step"]
    # the exported model is the best step's: its validation loss is the best one logged
    tok = AutoTokenizer.from_pretrained(out)
    rows = train_data.tokenize(read_rows(val), tok, 64)
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    loss, _, _ = heldout_pass(model, rows, batch_size=4, pad_id=tok.pad_token_id,
                              device=torch.device("cpu"), autocast=torch.autocast("cpu", enabled=False),
                              dist=Dist(0, 1, torch.device("cpu")))
    assert loss == pytest.approx(losses[best], rel=1e-5)
    assert loss < losses[summary["last_step"]]


def test_ewc_with_lambda_zero_is_plain_fine_tuning_and_its_fisher_is_cached(small_suite, tiny_model_dir, tmp_path):
    suite = small_suite(batch_size=8, ewc={"samples": 16})
    _, plain, m1 = run(suite, tiny_model_dir, tmp_path, "plain")
    cache = tmp_path / "fisher"
    p = Point(lr=1e-3, epochs=1, mix_ratio=0.0, regularizer="ewc", lam=0.0)
    first = train_point(suite, p, base_model_dir=tiny_model_dir, out_dir=tmp_path / "e1",
                        log_path=tmp_path / "e1.jsonl", state_dir=cache)
    assert first["fisher"]["variant"] == "true" and first["fisher"]["samples"] == 16
    m2 = AutoModelForCausalLM.from_pretrained(tmp_path / "e1")
    for a, b in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(a, b)
    # a second point reads the Fisher from the cache: same numbers, no new estimate
    (cache / "COMPLETE").write_text(json.dumps({**first["fisher"], "seconds": -1.0}))
    p = p.model_copy(update={"lam": 1e4})
    second = train_point(suite, p, base_model_dir=tiny_model_dir, out_dir=tmp_path / "e2",
                         log_path=tmp_path / "e2.jsonl", state_dir=cache)
    assert second["fisher"]["seconds"] == -1.0 and second["fisher"]["mean"] == first["fisher"]["mean"]
    log = [json.loads(l) for l in (tmp_path / "e2.jsonl").read_text().splitlines()]
    assert log[-1]["penalty"] > 0
    # the decoupled form at λ = 0 too
    p = p.model_copy(update={"lam": 0.0, "regularizer_form": "decoupled"})
    train_point(suite, p, base_model_dir=tiny_model_dir, out_dir=tmp_path / "e3", log_path=tmp_path / "e3.jsonl",
                state_dir=cache)
    for a, b in zip(m1.parameters(), AutoModelForCausalLM.from_pretrained(tmp_path / "e3").parameters()):
        assert torch.equal(a, b)


def test_strong_ewc_keeps_the_weights_the_fisher_marks_important(small_suite, tiny_model_dir, tmp_path):
    suite = small_suite(batch_size=8, max_grad_norm=None, ewc={"samples": 32, "fisher": "empirical"})
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    _, _, free = run(suite, tiny_model_dir, tmp_path, "free")
    _, _, held = run(suite, tiny_model_dir, tmp_path, "held", regularizer="ewc", lam=1e6)

    def distance(m):
        with torch.no_grad():
            return sum(float((p - q).square().sum()) for p, q in zip(m.parameters(), base.parameters()))

    assert distance(held) < 0.5 * distance(free)


def test_bf16_computes_in_bf16_over_fp32_master_weights(small_suite, tiny_model_dir, tmp_path):
    _, fp32, _ = run(small_suite(batch_size=8), tiny_model_dir, tmp_path, "fp32", epochs=2)
    _, bf16, _ = run(small_suite(batch_size=8, dtype="bfloat16"), tiny_model_dir, tmp_path, "bf16", epochs=2)
    # close to the fp32 trajectory (bf16 matmuls, fp32 accumulation), not bit-equal: bf16 computed it
    assert [r["loss"] for r in bf16] != [r["loss"] for r in fp32]
    for a, b in zip(fp32, bf16):
        assert b["loss"] == pytest.approx(a["loss"], rel=2e-3)  # measured: <= 3e-4
    # steps of ~1e-7 (Adam moves each weight by about lr) are far below bf16's spacing near
    # these weights (~1e-4): only fp32 master weights keep them
    _, _, tuned = run(small_suite(batch_size=8, dtype="bfloat16"), tiny_model_dir, tmp_path, "tiny-lr", lr=1e-7)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    for (name, p0), p1 in zip(base.named_parameters(), tuned.parameters()):
        assert p1.dtype == torch.float32
        assert not torch.equal(p0, p1), f"{name}: the update was rounded away"


def test_chat_training_trains_the_replies_and_is_another_point(small_suite, tiny_model_dir, tmp_path, capsys):
    import shutil

    from transformers import AutoTokenizer

    from forgetbench.cli import main
    from forgetbench.sweep import planned
    from tests.train.test_data import CHATML

    chat_model = tmp_path / "chat-model"
    shutil.copytree(tiny_model_dir, chat_model)
    tok = AutoTokenizer.from_pretrained(chat_model)
    tok.chat_template = CHATML
    tok.save_pretrained(chat_model)
    plain, chat = small_suite(batch_size=8), small_suite(batch_size=8, chat_template=True)
    summary, log, _ = run(chat, chat_model, tmp_path, "chat", epochs=3)
    assert summary["steps"] == len(log) == 12 and log[-1]["loss"] < log[0]["loss"]
    point = Point(lr=1e-3, epochs=1, mix_ratio=0.0, regularizer="none", lam=0.0)
    assert planned(chat, point).id != planned(plain, point).id
    assert "chat_template" not in planned(plain, point).config["train"]  # off: the ids points had before
    # a model without a chat template is refused before anything runs
    path = tmp_path / "chat.yaml"
    path.write_text((tmp_path / "suite.yaml").read_text())
    capsys.readouterr()
    assert main(["sweep", str(path), "--set", "train.chat_template=true", "--set", f"model={tiny_model_dir}",
                 "--runs-dir", str(tmp_path / "runs"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{path}: train.chat_template: the model's tokenizer has no chat template" in err
