import pytest
import torch
from torch.func import functional_call, grad
from transformers import AutoModelForCausalLM, AutoTokenizer

from forgetbench.train import data as train_data
from forgetbench.train.regularizers import (
    anchor_penalty_,
    anchor_pull_,
    fisher_diagonal,
    sample_labels,
    snapshot,
)


def moved_params():
    torch.manual_seed(0)
    params = [torch.randn(4, 3, requires_grad=True), torch.randn(5, requires_grad=True)]
    anchor = snapshot(params)
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn_like(p) * 0.3)
    return params, anchor


def test_l2_sp_gradient_and_value_match_autograd_of_the_formula():
    params, anchor = moved_params()
    lam = 0.7
    explicit = lam / 2 * sum(((p - a) ** 2).sum() for p, a in zip(params, anchor))
    expected = torch.autograd.grad(explicit, params)
    value = anchor_penalty_(params, anchor, lam)
    assert abs(value - explicit.item()) < 1e-5
    for p, g in zip(params, expected):
        torch.testing.assert_close(p.grad, g)


def test_ewc_gradient_and_value_match_autograd_of_the_fisher_weighted_formula():
    params, anchor = moved_params()
    fisher = [torch.rand_like(a) for a in anchor]
    lam = 3.0
    explicit = lam / 2 * sum((f * (p - a) ** 2).sum() for p, a, f in zip(params, anchor, fisher))
    expected = torch.autograd.grad(explicit, params)
    value = anchor_penalty_(params, anchor, lam, fisher)
    assert value == pytest.approx(explicit.item(), rel=1e-6)
    for p, g in zip(params, expected):
        torch.testing.assert_close(p.grad, g)


def test_penalty_adds_to_existing_gradients_and_lambda_zero_changes_nothing():
    p = torch.ones(3, requires_grad=True)
    anchor = [torch.zeros(3)]
    p.grad = torch.full((3,), 2.0)
    anchor_penalty_([p], anchor, 0.0)
    torch.testing.assert_close(p.grad, torch.full((3,), 2.0))
    anchor_penalty_([p], anchor, 0.5)
    torch.testing.assert_close(p.grad, torch.full((3,), 2.5))
    anchor_penalty_([p], anchor, 1.0, [torch.tensor([0.0, 1.0, 2.0])])
    torch.testing.assert_close(p.grad, torch.tensor([2.5, 3.5, 4.5]))


def test_decoupled_pull_is_the_penalty_flow_over_the_step_and_returns_the_penalty_before_it():
    params, anchor = moved_params()
    fisher = [torch.rand_like(a) * 10.0 ** torch.randint(-6, 2, a.shape) for a in anchor]
    before = [p.detach().clone() for p in params]
    lam, lrs = 300.0, [1e-2, 2e-3]  # lr·λ·F up to 300: the explicit step 1 − lr·λ·F would overshoot
    expected_value = lam / 2 * sum((f * (p - a) ** 2).sum() for p, a, f in zip(before, anchor, fisher))
    value = anchor_pull_(params, anchor, lam, lrs, fisher)
    assert value == pytest.approx(expected_value.item(), rel=1e-6)
    for p, p0, a, f, lr in zip(params, before, anchor, fisher, lrs):
        torch.testing.assert_close(p.detach(), a + (p0 - a) * torch.exp(-lr * lam * f))
        d0, d1 = (p0 - a).abs(), (p.detach() - a).abs()
        assert (d1 <= d0).all() and ((p.detach() - a) * (p0 - a) >= 0).all()  # toward θ0, never past it
    assert p.grad is None  # outside the gradient: Adam never sees it


def test_decoupled_pull_at_lambda_zero_or_zero_fisher_leaves_every_bit_and_a_huge_lambda_reaches_the_anchor():
    params, anchor = moved_params()
    before = [p.detach().clone() for p in params]
    anchor_pull_(params, anchor, 0.0, [1e-3, 1e-3])
    anchor_pull_(params, anchor, 1e9, [1e-3, 1e-3], [torch.zeros_like(a) for a in anchor])
    for p, b in zip(params, before):
        assert torch.equal(p.detach(), b)
    anchor_pull_(params, anchor, 1e9, [1e-3, 1e-3])  # L2-SP
    for p, a in zip(params, anchor):
        assert torch.equal(p.detach(), a)


@pytest.mark.parametrize("weighted", [False, True], ids=["l2-sp", "ewc"])
def test_under_adam_a_huge_lambda_holds_the_anchor_from_the_first_step_only_in_the_decoupled_form(weighted):
    """Adam's first step is lr·sign(g) whatever the gradient's scale: in the loss, a penalty
    that is 0 at θ0 cannot stop it, and its pull afterwards is normalised to ~lr too. The
    decoupled pull acts after the step, at the rate lr·λ·w, so the drift stays ~0 at once."""
    lr, lam, steps = 1e-2, 1e8, 5
    torch.manual_seed(0)
    data_grad = torch.randn(200)
    fisher = [torch.rand(200) + 0.01] if weighted else None

    def drift(form):
        theta = torch.zeros(200, requires_grad=True)
        anchor = snapshot([theta])
        opt = torch.optim.AdamW([theta], lr=lr, weight_decay=0.0)
        out = []
        for _ in range(steps):
            theta.grad = data_grad.clone()
            if form == "coupled":
                anchor_penalty_([theta], anchor, lam, fisher)
            opt.step()
            if form == "decoupled":
                anchor_pull_([theta], anchor, lam, [lr], fisher)
            out.append(float((theta.detach() - anchor[0]).abs().max()))
        return out

    coupled, decoupled = drift("coupled"), drift("decoupled")
    assert coupled[0] == pytest.approx(lr)          # the first step: every weight moves by lr
    assert min(coupled) > 0.1 * lr                  # and λ = 1e8 never brings it back
    assert max(decoupled) < 1e-6 * lr               # held at θ0 from the first step


def examples(model_dir):
    tok = AutoTokenizer.from_pretrained(model_dir)
    rows = [{"text": "The capital of France is Paris."}, {"text": "12+30=42"},
            {"prompt": "def add(a, b):\n    return", "completion": " a + b"},
            {"text": "Rome is the capital of Italy."}, {"prompt": "Drug is used to treat", "completion": " pain"}]
    return [next(train_data.batches([ex], 1, tok.pad_token_id))
            for ex in train_data.tokenize(rows, tok, 32)]


def brute_force_fisher(model, batch, labels_of):
    """Per-example gradients through torch.func (a separate code path from the recipe's
    backward), squared and averaged."""
    names = [n for n, _ in model.named_parameters()]
    theta = {n: p.detach() for n, p in model.named_parameters()}

    def log_lik(theta, ids, mask, target):
        logits = functional_call(model, theta, (ids,), {"attention_mask": mask}).logits
        return -torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), target.flatten(), ignore_index=train_data.IGNORE_INDEX,
            reduction="sum")

    total = {n: torch.zeros_like(theta[n]) for n in names}
    for ids, mask, labels in batch:
        target = labels_of(ids, mask, train_data.shift_labels(labels))
        g = grad(log_lik)(theta, ids, mask, target)
        for n in names:
            total[n] += g[n] ** 2
    return [total[n] / len(batch) for n in names]


@pytest.mark.parametrize("variant", ["empirical", "true"])
def test_fisher_matches_brute_force_per_example_gradients(tiny_model_dir, variant):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    batch = examples(tiny_model_dir)
    params = list(model.parameters())

    def logits_of(ids, mask):
        return model(input_ids=ids, attention_mask=mask).logits

    fisher = fisher_diagonal(params, logits_of, batch, variant=variant,
                             generator=torch.Generator().manual_seed(7))
    gen = torch.Generator().manual_seed(7)  # the same draws, in the same order

    def labels_of(ids, mask, target):
        if variant == "empirical":
            return target
        with torch.no_grad():
            return sample_labels(logits_of(ids, mask), target, gen)

    expected = brute_force_fisher(model, batch, labels_of)
    for f, e in zip(fisher, expected):
        torch.testing.assert_close(f, e, rtol=1e-4, atol=1e-9)
    assert all(p.grad is None for p in params)  # nothing left behind for training
    assert sum(float(f.sum()) for f in fisher) > 0


def test_true_fisher_labels_follow_the_model_and_keep_ignored_positions():
    logits = torch.tensor([[[0.0, 20.0, 0.0], [20.0, 0.0, 0.0], [0.0, 0.0, 20.0]]])
    labels = torch.tensor([[2, train_data.IGNORE_INDEX, 0]])
    drawn = sample_labels(logits, labels, torch.Generator().manual_seed(0))
    assert drawn.tolist() == [[1, train_data.IGNORE_INDEX, 2]]  # the model's near-certain tokens


def test_empirical_and_true_fisher_differ_on_a_model_that_is_unsure(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    batch = examples(tiny_model_dir)
    params = list(model.parameters())

    def run(variant):
        return fisher_diagonal(params, lambda i, m: model(input_ids=i, attention_mask=m).logits,
                               batch, variant=variant, generator=torch.Generator().manual_seed(0))

    emp, true = run("empirical"), run("true")
    assert not all(torch.allclose(a, b) for a, b in zip(emp, true))
