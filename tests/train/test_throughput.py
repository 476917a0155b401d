import pytest
import torch

from forgetbench.train import throughput


def test_flops_per_token_is_6n_plus_attention():
    # LLaMA-7B-like: N = 6.7e9, L = 32, d = 4096, s = 2048
    assert throughput.flops_per_token(6.7e9, 32, 4096, 2048) == pytest.approx(6 * 6.7e9 + 12 * 32 * 4096 * 2048)


def test_mfu_needs_a_known_peak():
    assert throughput.mfu(1000.0, 6e9, None, 1) is None
    assert throughput.mfu(10_000.0, 6e9, 989e12, 8) == pytest.approx(1e4 * 6e9 / (989e12 * 8))
    assert throughput.peak_flops(torch.device("cpu")) is None


def test_peak_memory_on_cpu_is_the_process_rss():
    before = throughput.peak_memory_gb(torch.device("cpu"))
    block = bytearray(300 * 1024 * 1024)  # touch 300 MB
    block[::4096] = b"x" * len(block[::4096])
    assert throughput.peak_memory_gb(torch.device("cpu")) >= max(before, 0.3)


def test_mfu_counts_the_parameters_of_matrix_products_only():
    from transformers import AutoConfig, AutoModelForCausalLM

    kw = {"num_hidden_layers": 2, "hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 2,
          "num_key_value_heads": 2, "vocab_size": 100}
    untied = AutoModelForCausalLM.from_config(AutoConfig.for_model("llama", **kw))
    total = sum(p.numel() for p in untied.parameters())
    assert throughput.matmul_params(untied) == total - 100 * 16  # the input table is a lookup
    tied = AutoModelForCausalLM.from_config(AutoConfig.for_model("llama", tie_word_embeddings=True, **kw))
    # one table, used by the head's matrix product: counted once
    assert throughput.matmul_params(tied) == sum(p.numel() for p in tied.parameters()) == total - 100 * 16
    gpt2 = AutoModelForCausalLM.from_config(AutoConfig.for_model("gpt2", n_layer=2, n_embd=16, n_head=2,
                                                                  vocab_size=100, n_positions=64))
    # tied token table counted (the head uses it), position table not
    assert throughput.matmul_params(gpt2) == sum(p.numel() for p in gpt2.parameters()) - 64 * 16
