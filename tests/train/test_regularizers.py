import torch

from forgetbench.train.regularizers import l2_sp_penalty_, snapshot


def test_l2_sp_gradient_and_value_match_autograd_of_the_formula():
    torch.manual_seed(0)
    params = [torch.randn(4, 3, requires_grad=True), torch.randn(5, requires_grad=True)]
    anchor = snapshot(params)
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn_like(p) * 0.3)
    lam = 0.7
    explicit = lam / 2 * sum(((p - a) ** 2).sum() for p, a in zip(params, anchor))
    expected = torch.autograd.grad(explicit, params)
    value = l2_sp_penalty_(params, anchor, lam)
    assert abs(value - explicit.item()) < 1e-5
    for p, g in zip(params, expected):
        torch.testing.assert_close(p.grad, g)


def test_l2_sp_adds_to_existing_gradients_and_lambda_zero_changes_nothing():
    p = torch.ones(3, requires_grad=True)
    anchor = [torch.zeros(3)]
    p.grad = torch.full((3,), 2.0)
    l2_sp_penalty_([p], anchor, 0.0)
    torch.testing.assert_close(p.grad, torch.full((3,), 2.0))
    l2_sp_penalty_([p], anchor, 0.5)
    torch.testing.assert_close(p.grad, torch.full((3,), 2.5))
