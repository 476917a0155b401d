"""The leakage guard: no evaluation item is trained on, and no held-out row is trained on.

Texts are compared as normalised tokens: NFKC, lower case, then runs of word characters and
single other non-space characters (``\\w+|[^\\w\\s]``), so whitespace and case hide nothing:
"12+34=46" and "12 + 34 = 46" are the same tokens. An evaluation item (one document of an
lm-eval task) has a question and an answer; its *content* is the question's tokens followed
by the answer's. A training row leaks an item when

(a) the row's prompt is the item's question (the test question itself is trained on), or
(b) the item's content is a contiguous run of the row's tokens (prompt then completion, or
    text). Contents are capped at their last ``MAX_ITEM_TOKENS`` tokens, which hold the
    answer; contents under 2 tokens are left to (a), as they would match by chance.

(b) is a set lookup of content hashes: for each length ℓ of some item, the ℓ-token windows of
the row are looked up among the items of that length. Only windows whose first two tokens
open, and whose last token closes, some item of length ℓ are hashed, so a row costs about one
dictionary lookup per token (100k rows of 77 tokens against 10k items: about 3 s).
"""
from __future__ import annotations

import itertools
import re
import unicodedata
from dataclasses import dataclass, field

from forgetbench.config import Suite
from forgetbench.datafiles import Source, numbered_rows, where
from forgetbench.errors import ForgetbenchError

MAX_ITEM_TOKENS = 64
_TOKEN = re.compile(r"\w+|[^\w\s]")

Tokens = tuple[str, ...]


def tokens(text: str) -> Tokens:
    """Normalised tokens: NFKC, lower case, words and single punctuation marks."""
    return tuple(_TOKEN.findall(unicodedata.normalize("NFKC", text).lower()))


def row_tokens(row: dict) -> Tokens:
    """What a training row's model input holds: its text, or its prompt then completion."""
    if isinstance(row.get("text"), str):
        return tokens(row["text"])
    return tokens(row["prompt"]) + tokens(row["completion"])


@dataclass(frozen=True)
class EvalItem:
    task: str
    doc: int  # index in the task's evaluation split, as lm-eval numbers its samples
    question: str
    answer: str

    def excerpt(self) -> str:
        def short(text: str, width: int) -> str:
            text = " ".join(text.split())
            return text if len(text) <= width else text[:width - 1] + "…"
        return f'"{short(self.question, 50)}" → "{short(self.answer, 30)}"'


@dataclass(frozen=True)
class Leak:
    row: int        # index in the rows given to find_leaks
    item: EvalItem
    rule: str       # "question": (a) the prompt is the question; "content": (b)


@dataclass
class EvalIndex:
    """Eval items by question tokens (rule a) and by capped content tokens (rule b)."""

    questions: dict[Tokens, EvalItem] = field(default_factory=dict)
    contents: dict[Tokens, EvalItem] = field(default_factory=dict)
    # first two content tokens -> (length, last tokens) of the contents they open, by length
    openings: dict[tuple[str, str], tuple[tuple[int, frozenset[str]], ...]] = field(
        default_factory=dict)


def build_index(items: dict[str, list[tuple[str, str]]]) -> EvalIndex:
    """Index ``harness.eval_items`` output: task -> [(question, answer)] in document order."""
    index = EvalIndex()
    openings: dict[tuple[str, str], dict[int, set[str]]] = {}
    for task, docs in items.items():
        for doc, (question, answer) in enumerate(docs):
            item = EvalItem(task, doc, question, answer)
            q = tokens(question)
            if q:
                index.questions.setdefault(q, item)
            content = (q + tokens(answer))[-MAX_ITEM_TOKENS:]
            if len(content) >= 2:
                index.contents.setdefault(content, item)
                lasts = openings.setdefault(content[:2], {}).setdefault(len(content), set())
                lasts.add(content[-1])
    index.openings = {k: tuple((n, frozenset(v[n])) for n in sorted(v))
                      for k, v in openings.items()}
    return index


def find_leaks(rows: list[dict], index: EvalIndex) -> list[Leak]:
    """The rows that leak an eval item, each once, with the first item found: rule (a) before
    (b), then the leftmost, shortest window."""
    leaks = []
    openings, contents = index.openings, index.contents
    for i, row in enumerate(rows):
        if isinstance(row.get("text"), str):
            toks = tokens(row["text"])
        else:
            prompt = tokens(row["prompt"])
            item = index.questions.get(prompt)
            if item is not None:
                leaks.append(Leak(i, item, "question"))
                continue
            toks = prompt + tokens(row["completion"])
        n = len(toks)
        found = None
        for start, pair in enumerate(itertools.pairwise(toks)):
            for length, lasts in openings.get(pair, ()):
                end = start + length
                if end > n:
                    break
                if toks[end - 1] in lasts:  # cheap, before hashing the window
                    found = contents.get(toks[start:end])
                    if found is not None:
                        break
            if found is not None:
                leaks.append(Leak(i, found, "content"))
                break
    return leaks


def _rows_with_lines(path: Source) -> tuple[list[dict], list[int]]:
    """The rows of a data source and the file line (or dataset row) of each."""
    numbered = numbered_rows(path)
    return [row for _, row in numbered], [line for line, _ in numbered]


def check_leakage(suite: Suite, items: dict[str, list[tuple[str, str]]]) -> None:
    """Refuse a suite whose training touches its evaluation. Checked, in this order:

    - data.target, data.replay and data.validation against every eval item of the target
      and general tasks (rules a and b above): training on them, or choosing the stopping
      step on them, turns the score into a memory test;
    - data.validation and data.general_heldout against data.target and data.replay, row by
      row (equal normalised tokens): a held-out set that is trained on is not held out.

    data.general_heldout is never trained on, so it is not checked against eval items; nor is
    data.fisher, which only weights the EWC penalty and is never trained on either.
    The first problem is one ForgetbenchError line: the row's file:line, the item, how many
    rows are affected and the fix.
    """
    data = suite.data
    read = {path: _rows_with_lines(path) for path in
            (data.target, data.replay, data.validation, data.general_heldout) if path is not None}
    index = build_index(items)
    checked = [(f, p) for f, p in (("data.target", data.target), ("data.replay", data.replay),
                                   ("data.validation", data.validation)) if p is not None]
    found = {f: find_leaks(read[p][0], index) for f, p in checked}
    for f, path in checked:
        if not found[f]:
            continue
        leak = found[f][0]
        what = ("its prompt is the question of" if leak.rule == "question"
                else "it contains the question and answer of")
        others = [f"{len(v)} in {g}" for g, v in found.items() if v and g != f]
        raise ForgetbenchError(
            f"{where(path, read[path][1][leak.row])}: {f} row leaks an evaluation item: {what} "
            f"{leak.item.task} doc {leak.item.doc} {leak.item.excerpt()}; "
            f"{len(found[f])} row(s) of {f} leak eval items in all"
            + (f" (also {', '.join(others)})" if others else "")
            + f": remove those rows from {f}")

    trained: dict[Tokens, tuple[str, Source, int]] = {}
    for f, path in (("data.target", data.target), ("data.replay", data.replay)):
        if path is not None:
            rows, lines = read[path]
            for row, line in zip(rows, lines):
                trained.setdefault(row_tokens(row), (f, path, line))
    for f, path in (("data.validation", data.validation),
                    ("data.general_heldout", data.general_heldout)):
        if path is None:
            continue
        rows, lines = read[path]
        shared = [(line, trained[t]) for row, line in zip(rows, lines)
                  if (t := row_tokens(row)) in trained]
        if shared:
            line, (g, other, other_line) = shared[0]
            raise ForgetbenchError(
                f"{where(path, line)}: {f} row is also trained on, as {g} ({where(other, other_line)}); "
                f"{len(shared)} row(s) of {f} are in the training data in all, so they are not "
                f"held out: remove those rows from {f} (or from {g})")
