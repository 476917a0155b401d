"""Training data: tokenising rows (read by forgetbench/datafiles.py) with completion-only
labels, mixing target and replay examples, and batching.

Rows are {"prompt", "completion"} (the loss covers the completion only, as in SFT) or
{"text"} (the loss covers every token, as for pretraining-like replay data).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from forgetbench.errors import ForgetbenchError

IGNORE_INDEX = -100  # label of tokens the loss skips (torch cross_entropy's default)


@dataclass(frozen=True)
class Example:
    input_ids: tuple[int, ...]
    labels: tuple[int, ...]


def tokenize(rows: list[dict], tokenizer, max_len: int, *, chat: bool = False) -> list[Example]:
    """Prompt tokens (with the tokenizer's own BOS, if it adds one) are masked from the loss;
    completion or text tokens are learned, followed by EOS. Longer rows are cut at max_len.

    With ``chat`` (``train.chat_template``) a prompt/completion row is a conversation: the
    prompt a user turn, the completion the assistant's reply, rendered by the tokenizer's chat
    template. What the template renders up to the assistant's reply (system turn, user turn,
    the assistant header: what a chat evaluation gives the model) is masked; the reply and
    the template's end of turn are learned, and stand in for EOS. Text rows stay plain text."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    # a chat prompt gets the BOS the tokenizer prepends to any text unless its template wrote it,
    # as lm-eval encodes a chat prompt (add_bos_token pinned from the same tokenizer)
    bos = tokenizer.bos_token_id
    chat_bos = [bos] if chat and bos is not None and tokenizer("a")["input_ids"][:1] == [bos] else []
    out = []
    for row in rows:
        if "text" in row:
            ids = tokenizer(row["text"])["input_ids"] + eos
            labels = list(ids)
        else:
            if chat:
                prompt_text, reply_text = chat_turns(tokenizer, row["prompt"], row["completion"])
                prompt = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
                if chat_bos and not prompt_text.startswith(tokenizer.bos_token):
                    prompt = chat_bos + prompt
                completion = tokenizer(reply_text, add_special_tokens=False)["input_ids"]
            else:
                prompt = tokenizer(row["prompt"])["input_ids"]
                completion = tokenizer(row["completion"], add_special_tokens=False)["input_ids"] + eos
            ids = prompt + completion
            labels = [IGNORE_INDEX] * len(prompt) + completion
        out.append(Example(tuple(ids[:max_len]), tuple(labels[:max_len])))
    return out


def chat_turns(tokenizer, prompt: str, completion: str) -> tuple[str, str]:
    """(everything the chat template renders before the assistant's reply, the reply with its
    end of turn) for one user prompt. The template renders the whole conversation; a template
    whose rendering of it does not begin with its rendering of the prompt alone (with the
    generation prompt) cannot be split so, and is refused."""
    if not getattr(tokenizer, "chat_template", None):
        raise ForgetbenchError("train.chat_template: the model's tokenizer has no chat template "
                               "(tokenizer_config.json chat_template); use a chat model or set "
                               "train.chat_template: false")
    user = [{"role": "user", "content": prompt}]
    head = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    whole = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": completion}],
                                          tokenize=False)
    if not whole.startswith(head) or len(whole) == len(head):
        raise ForgetbenchError("train.chat_template: the model's chat template does not render a "
                               "conversation as the prompt's rendering followed by the reply, so the "
                               "reply cannot be told from the prompt; set train.chat_template: false "
                               "and write the chat format into the data's prompts")
    return head, whole[len(head):]


def learns_nothing(examples: list[Example]) -> bool:
    """No example has a token to learn: every label after the first (position 0 is never
    predicted) is masked, e.g. when max_len cuts every completion off its prompt."""
    return all(lab == IGNORE_INDEX for ex in examples for lab in ex.labels[1:])


def target_examples(epochs: float, n_rows: int) -> int:
    """Target examples in a stream of ``epochs`` passes over ``n_rows`` rows: round(epochs · n_rows)."""
    return round(epochs * n_rows)


def mixture(target: list[Example], replay: list[Example], *, epochs: float,
            mix_ratio: float, seed: int) -> list[Example]:
    """The training stream of one point, shuffled with ``seed``.

    Epochs count target data: n_target = round(epochs · |target|) examples (whole passes,
    then a seeded part of one more). A fraction ``mix_ratio`` of the stream is replay:
    n_replay = round(n_target · r / (1 − r)), drawn from seeded passes over the replay pool.
    """
    gen = torch.Generator().manual_seed(seed)

    def draw(pool: list[Example], n: int) -> list[Example]:
        picked: list[Example] = []
        while len(picked) < n:
            order = torch.randperm(len(pool), generator=gen).tolist()
            picked.extend(pool[i] for i in order[: n - len(picked)])
        return picked

    n_target = target_examples(epochs, len(target))
    whole, part = divmod(n_target, len(target))
    stream = target * whole + draw(target, part)
    if mix_ratio > 0:
        if not replay:
            raise ForgetbenchError("mix_ratio > 0 needs replay data (data.replay in the suite)")
        stream += draw(replay, round(n_target * mix_ratio / (1 - mix_ratio)))
    order = torch.randperm(len(stream), generator=gen).tolist()
    return [stream[i] for i in order]


def shift_labels(labels: torch.Tensor) -> torch.Tensor:
    """Labels aligned with the logits: position t holds the token at t + 1 (what the logits
    at t predict), the last position none. Shifting the labels, not the logits, avoids
    copying a batch × length × vocab tensor."""
    return torch.nn.functional.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)


def batches(stream: list[Example], batch_size: int, pad_id: int):
    """Right-padded (input_ids, attention_mask, labels) tensors, in stream order."""
    for start in range(0, len(stream), batch_size):
        chunk = stream[start:start + batch_size]
        width = max(len(ex.input_ids) for ex in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        labels = torch.full((len(chunk), width), IGNORE_INDEX, dtype=torch.long)
        for row, ex in enumerate(chunk):
            n = len(ex.input_ids)
            ids[row, :n] = torch.tensor(ex.input_ids)
            mask[row, :n] = 1
            labels[row, :n] = torch.tensor(ex.labels)
        yield ids, mask, labels

