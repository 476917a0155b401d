import pytest

from forgetbench.plan import ModelShape, Workload, fsdp, textbook


# The classic estimate quoted in the literature: 16 B/param, activations s·b·d·L·12,
# LLaMA 7B / 13B / 70B at s 2048, b 1 on 80 GB cards.
@pytest.mark.parametrize("params, d, L, state, acts, gpus", [
    (7e9, 4096, 32, 112.0, 3.2, 2), (13e9, 5120, 40, 208.0, 5.0, 3), (70e9, 8192, 80, 1120.0, 16.1, 15)])
def test_textbook_formula_reproduces_the_classic_numbers(params, d, L, state, acts, gpus):
    plan = textbook(ModelShape(params=params, hidden=d, layers=L), Workload(seq_len=2048, batch_size=1))
    assert round(plan.weights_gb + plan.gradients_gb + plan.optimizer_gb, 1) == state
    assert round(plan.activations_gb, 1) == acts
    assert plan.min_gpus == gpus


def test_fsdp_state_shrinks_with_gpus_and_anchors_cost_what_they_store():
    m = ModelShape(params=7e9, hidden=4096, layers=32, heads=32, vocab=32000)
    one, eight = fsdp(m, Workload(seq_len=2048, gpus=1)), fsdp(m, Workload(seq_len=2048, gpus=8))
    assert one.optimizer_gb == pytest.approx(8 * 7e9 / 1e9)
    assert eight.optimizer_gb == pytest.approx(one.optimizer_gb / 8)
    assert eight.working_set_gb > 0 and one.working_set_gb == 0
    assert eight.activations_gb == pytest.approx(one.activations_gb)
    l2 = fsdp(m, Workload(seq_len=2048, gpus=8, regularizer="l2"))
    ewc = fsdp(m, Workload(seq_len=2048, gpus=8, regularizer="ewc"))
    assert l2.anchors_gb == pytest.approx(4 * 7e9 / 8 / 1e9)
    assert ewc.anchors_gb == pytest.approx(2 * l2.anchors_gb)
    assert not one.fits and eight.fits
    assert fsdp(m, Workload(seq_len=2048, gpus=eight.min_gpus)).fits
    assert not fsdp(m, Workload(seq_len=2048, gpus=eight.min_gpus - 1)).fits


def test_plan_command_from_flags_and_from_a_suite(capsys):
    import json

    from forgetbench.cli import main
    from tests.conftest import SUITES

    assert main(["plan", "--params", "13e9", "--hidden", "5120", "--layers", "40", "--seq-len", "2048",
                 "--formula", "textbook", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["min_gpus"] == 3 and round(out["activations_gb"], 1) == 5.0
    assert main(["plan", str(SUITES / "medical.yaml"), "--gpu-memory", "80", "--json"]) == 0
    tiny = json.loads(capsys.readouterr().out)
    assert tiny["fits"] and tiny["min_gpus"] == 1
    # 935,040 params × 16 B of fp32 state, one GPU
    assert tiny["weights_gb"] + tiny["gradients_gb"] + tiny["optimizer_gb"] == pytest.approx(935040 * 16 / 1e9)
    assert main(["plan", "--params", "7e9"]) == 2
    assert "missing: --hidden, --layers, --seq-len" in capsys.readouterr().err


def test_sweep_refuses_a_suite_that_cannot_fit_unless_forced(monkeypatch, tmp_path, capsys):
    import torch

    from forgetbench import cli, plan
    from forgetbench.train import distributed
    from tests.conftest import SUITES

    monkeypatch.setattr(plan, "gpu_memory_gb", lambda: 0.001)  # a 1 MB "GPU"
    monkeypatch.setattr(distributed, "resolve_device", lambda name: torch.device("cuda"))
    runs = tmp_path / "runs"
    args = ["sweep", str(SUITES / "medical.yaml"), "--runs-dir", str(runs), "--dry-run"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "train: needs" in err and "GB per GPU" in err and "--force" in err and err.count("\n") == 1
    assert not runs.exists()
    assert cli.main(args + ["--force"]) == 0


def test_activation_checkpointing_keeps_only_block_inputs():
    m = ModelShape(params=7e9, hidden=4096, layers=32, heads=32, vocab=32000)
    full = fsdp(m, Workload(seq_len=2048, gpus=8))
    ac = fsdp(m, Workload(seq_len=2048, gpus=8, activation_checkpointing=True))
    assert ac.activations_gb < full.activations_gb / 5
    assert ac.activations_gb == pytest.approx((32 * 2048 * 4096 * 2 + 2048 * 4096 * 34 + 2 * 2048 * 32000 * 4) / 1e9)
