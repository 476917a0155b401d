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
