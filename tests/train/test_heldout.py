import torch

from forgetbench.train.heldout import top_kl, top_logprobs


def test_top_k_kl_is_exact_with_the_whole_vocabulary_and_a_lower_bound_below_it():
    torch.manual_seed(0)
    base = torch.log_softmax(3 * torch.randn(40, 300), dim=-1)
    model = torch.log_softmax(base + torch.randn(40, 300), dim=-1)
    exact = (base.exp() * (base - model)).sum(-1)
    torch.testing.assert_close(top_kl(top_logprobs(base, 300), model), exact, rtol=1e-5, atol=1e-6)
    bounds = [top_kl(top_logprobs(base, k), model) for k in (8, 64, 256)]
    for low, high in zip(bounds, bounds[1:] + [exact]):
        assert (low >= -1e-6).all() and (low <= high + 1e-5).all()  # more of the vocabulary, closer
    assert float(bounds[-1].sum()) > 0.95 * float(exact.sum())
    assert float(top_kl(top_logprobs(base, 8), base).abs().max()) < 1e-6  # the base against itself
    top, ids, rest = top_logprobs(base, 64)
    assert top.shape == ids.shape == (40, 64) and ids.dtype == torch.int32 and rest.shape == (40,)
