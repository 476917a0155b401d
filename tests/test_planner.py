import pytest

from forgetbench.planner import ModelShape, Workload, fsdp, textbook


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
    # FSDP gathers two blocks and the root at a time; one process keeps autocast's bf16 copies
    assert 0 < eight.working_set_gb < one.working_set_gb == pytest.approx(2 * 7e9 / 1e9)
    # the same micro-batch; FSDP's bf16 residual stream saves less than autocast's fp32 one
    assert eight.activations_gb < one.activations_gb
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
    # what the plan assumed: the embedded model, the suite's batch, and its costliest regulariser
    assert tiny["basis"].startswith("0.935M parameters (d 128, 4 layers, MLP 3·d")
    assert "16 x 64 tokens per GPU" in tiny["basis"] and tiny["basis"].endswith("regulariser ewc")
    # 935,040 params × 16 B of fp32 state, one GPU
    assert tiny["weights_gb"] + tiny["gradients_gb"] + tiny["optimizer_gb"] == pytest.approx(935040 * 16 / 1e9)
    assert main(["plan", "--params", "7e9"]) == 2
    assert "missing: --hidden, --layers, --seq-len" in capsys.readouterr().err


def test_sweep_refuses_a_suite_that_cannot_fit_unless_forced(monkeypatch, tmp_path, capsys):
    import torch

    from forgetbench import cli, devices, planner
    from tests.conftest import SUITES

    monkeypatch.setattr(planner, "gpu_memory_gb", lambda: 0.001)  # a 1 MB "GPU"
    monkeypatch.setattr(devices, "resolve_device", lambda name: torch.device("cuda"))
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
    # without checkpointing: every layer's saved tensors, one layer's backward temporaries
    saved = 2048 * 4096 * (20 + 4 + 8 * m.mlp_ratio)
    temporaries = 2048 * 4096 * 2 * (3 * m.mlp_ratio + 1)
    assert full.activations_gb == pytest.approx((32 * saved + temporaries + 12 * 2048 * 32000) / 1e9)
    # bf16 parameters under FSDP, and one layer's backward temporaries
    per_layer = 2048 * 4096 * (20 + 4 + 8 * m.mlp_ratio + 2 * (3 * m.mlp_ratio + 1))
    assert ac.activations_gb == pytest.approx((32 * 2048 * 4096 * 2 + per_layer + 12 * 2048 * 32000) / 1e9)


def _saved_bytes(config, layers: int, mode: str, tokens: tuple[int, int]) -> tuple[int, int]:
    """Bytes of the tensors a training forward saves for the backward (parameters aside),
    and the parameter count of one decoder block."""
    import torch
    from transformers import AutoModelForCausalLM

    fields = {**config.to_dict(), "num_hidden_layers": layers}
    fields.pop("layer_types", None)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(type(config)(**fields))
    if mode == "bf16 params":
        model = model.to(torch.bfloat16)
    own = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in own:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    ids = torch.randint(0, config.vocab_size, tokens)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "autocast"):
        model(input_ids=ids)
    block = sum(p.numel() for p in model.model.layers[0].parameters())
    return sum(saved.values()), block


@pytest.mark.parametrize("family", ["llama", "qwen2-gqa"])
@pytest.mark.parametrize("mode", ["bf16 params", "autocast", "fp32"])
def test_activation_formula_matches_what_a_real_forward_saves(family, mode):
    """The planner's per-layer activation bytes against autograd's saved tensors in
    transformers' own decoder layer: one layer more, at the same tokens, costs what the
    formula says (autocast also keeps that layer's bf16 weight copies, its working set)."""
    from transformers import LlamaConfig, Qwen2Config

    config = (LlamaConfig(vocab_size=128, hidden_size=256, intermediate_size=688, num_attention_heads=4,
                          num_key_value_heads=4) if family == "llama" else
              Qwen2Config(vocab_size=128, hidden_size=256, intermediate_size=896, num_attention_heads=8,
                          num_key_value_heads=2))
    s, b = 256, 2
    one, block = _saved_bytes(config, 1, mode, (b, s))
    two, _ = _saved_bytes(config, 2, mode, (b, s))
    shape = ModelShape(params=1.0, hidden=256, layers=2, heads=config.num_attention_heads, vocab=128,
                       intermediate=config.intermediate_size, kv_heads=config.num_key_value_heads)
    work = Workload(seq_len=s, batch_size=b, dtype="float32" if mode == "fp32" else "bfloat16")
    from forgetbench.planner import activation_bytes_per_layer

    expected = s * b * activation_bytes_per_layer(shape, work, sharded=mode == "bf16 params")
    if mode == "autocast":
        expected += 2 * block
    assert two - one == pytest.approx(expected, rel=0.02)


def test_single_gpu_bf16_counts_autocasts_weight_copies_and_derives_the_mlp_width():
    m = ModelShape(params=6.74e9, hidden=4096, layers=32, heads=32, vocab=32000)
    # LLaMA-7B's block: 4·d² attention + 3·d·11008 MLP; the width follows from the parameters
    assert m.mlp_ratio == pytest.approx(11008 / 4096, rel=0.01)
    one = fsdp(m, Workload(seq_len=2048, gpus=1))
    assert one.working_set_gb == pytest.approx(2 * 6.74)
    assert fsdp(m, Workload(seq_len=2048, gpus=1, dtype="float32")).working_set_gb == 0
    ac = fsdp(m, Workload(seq_len=2048, gpus=1, activation_checkpointing=True))
    assert ac.working_set_gb < one.working_set_gb / 10
