"""Held-out evaluations during training: the mean token loss on rows never trained on
(target validation, general held-out) and KL(base ‖ fine-tuned) on the general rows, the
forgetting curve that ``train.eval_every`` logs.

The KL keeps, per held-out token, only the base model's top-k log-probabilities and the
mass outside them, and merges that rest into one outcome:

    KL_k = Σ_{i ∈ top} p_i (log p_i − log q_i) + p_rest (log p_rest − log q_rest)

exact when the rest has no mass, else a lower bound of the full KL (merging outcomes never
raises a divergence).
"""
from __future__ import annotations

import math

import torch

from forgetbench.train import data as train_data
from forgetbench.train import distributed

# track_kl keeps, per held-out token, the base model's KL_TOP_K largest log-probabilities,
# their token ids and the log of the mass outside them: ~2 KB a token whatever the
# vocabulary (the full distribution would be 4 B × V: 0.5 MB a token at V = 128k)
KL_TOP_K = 256


def _rest_logmass(logp: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log Σ exp(logp) over the vocabulary outside ``ids``, per row (−inf when empty)."""
    return torch.logsumexp(logp.scatter(1, ids, float("-inf")), dim=-1)


def top_logprobs(logp: torch.Tensor, k: int = KL_TOP_K) -> tuple[torch.Tensor, ...]:
    """A distribution's top-k log-probs, their ids (int32) and its log-mass outside them."""
    top, ids = logp.topk(min(k, logp.shape[-1]), dim=-1)
    return top, ids.to(torch.int32), _rest_logmass(logp, ids)


def top_kl(base: tuple[torch.Tensor, ...], logp: torch.Tensor) -> torch.Tensor:
    """Per-row KL(base ‖ model) over the base's top-k tokens and the rest merged into one
    outcome: exact when the rest has no mass, else a lower bound of the full KL (merging
    outcomes never raises a divergence), tight when the rest is small."""
    top, ids, rest = base
    ids = ids.long()
    kl = (top.exp() * (top - logp.gather(1, ids))).sum(-1)
    p_rest = rest.exp()
    return kl + torch.where(p_rest > 0, p_rest * (rest - _rest_logmass(logp, ids)), 0.0)


@torch.no_grad()
def heldout_pass(model, rows: list[train_data.Example], *, batch_size: int, pad_id: int,
                 device: torch.device, autocast, dist: distributed.Dist,
                 base_logprobs: list[tuple[torch.Tensor, ...]] | None = None,
                 keep_logprobs: bool = False) -> tuple[float, float | None, list[tuple[torch.Tensor, ...]]]:
    """Mean token loss on held-out rows (each rank takes every world-th row; all ranks run
    the same number of batches), and with ``base_logprobs`` the mean per-token KL(base ‖
    model) at the labelled positions (``top_kl``). ``keep_logprobs`` returns this model's
    top log-probs at those positions (on the CPU), to be the base of later calls."""
    share = rows[dist.rank::dist.world_size]
    n_batches = math.ceil(math.ceil(len(rows) / dist.world_size) / batch_size)
    filler = train_data.Example((pad_id,), (train_data.IGNORE_INDEX,))
    loss_sum, kl_sum, n_tokens, kept = 0.0, 0.0, 0, []
    for b in range(n_batches):
        chunk = share[b * batch_size:(b + 1) * batch_size] or [filler]
        ids, mask, labels = next(train_data.batches(chunk, len(chunk), pad_id))
        with autocast:
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        target = train_data.shift_labels(labels).to(device)
        picked = target != train_data.IGNORE_INDEX
        logp = torch.log_softmax(logits.float()[picked], dim=-1)
        loss_sum += float(-logp.gather(1, target[picked].unsqueeze(1)).sum())
        n_tokens += int(picked.sum())
        if keep_logprobs:
            kept.append(tuple(t.cpu() for t in top_logprobs(logp)))
        if base_logprobs is not None:
            kl_sum += float(top_kl(tuple(t.to(device) for t in base_logprobs[b]), logp).sum())
    loss_sum, kl_sum, n_tokens = distributed.all_reduce_sums([loss_sum, kl_sum, n_tokens], dist)
    n_tokens = max(n_tokens, 1)
    return loss_sum / n_tokens, (kl_sum / n_tokens if base_logprobs is not None else None), kept
