"""The evaluation store: a model's scores on a set of tasks under eval settings, computed once
per (model fingerprint, eval key) and shared by ``sweep``, ``eval`` and ``compare``.

A model is evaluated only through :meth:`EvalStore.scores`. Its record is kept where the
run layout puts it: a sweep point's exported model (``<run>/points/<id>/model``) in that
point's ``scores/<eval key>.json``, any other model (``builtin:…``, a folder, a hub id) in
``<runs dir>/evals/<model hash>-<eval key>.json``. Every record carries the model's
fingerprint; one that does not match the model as it is now (a point retrained, a folder
overwritten, a hub model at another revision), or has none, is recomputed, and a corrupt one
is set aside (store.reuse_result).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from forgetbench.config import EvalSpec, TasksSpec
from forgetbench.eval import harness
from forgetbench.models import model_fingerprint, model_hash, resolve_model
from forgetbench.store import atomic_write_json, check_writable, reuse_result


def _point_dir(model: str) -> Path | None:
    """The point directory of a sweep point's exported model, else None."""
    path = Path(model).resolve()
    if path.name == "model" and path.parent.parent.name == "points" and (path.parent / "point.json").exists():
        return path.parent
    return None


class EvalStore:
    def __init__(self, root: Path):
        self.root = Path(root)  # <runs dir>/evals

    def path(self, model: str, key: str) -> Path:
        point = _point_dir(model)
        if point is not None:
            return point / "scores" / f"{key}.json"
        return self.root / f"{model_hash(model)}-{key}.json"

    def stored(self, model: str, tasks: TasksSpec, spec: EvalSpec, *,
               warn: Callable[[str], None] = print) -> dict[str, Any] | None:
        """``model``'s stored scores under these settings, if it has them as it is now."""
        path = self.path(model, harness.eval_key(harness.eval_settings(tasks, spec)))
        stored = reuse_result(path, warn)
        return stored if stored is not None and stored.get("model") == model_fingerprint(model) else None

    def scores(self, model: str, tasks: TasksSpec, spec: EvalSpec, *, trust_remote_code: bool = False,
               warn: Callable[[str], None] = print, before: Callable[[], None] | None = None,
               show_progress: bool = False) -> tuple[dict[str, Any], Path, bool]:
        """``model``'s scores: (record, its file, whether it was evaluated now). ``before`` is
        called just before an evaluation (to say one is starting)."""
        path = self.path(model, harness.eval_key(harness.eval_settings(tasks, spec)))
        stored = self.stored(model, tasks, spec, warn=warn)
        if stored is not None:
            return stored, path, False
        fingerprint = model_fingerprint(model)  # the model as evaluated
        check_writable(path.parent, "the evaluation store")  # before hours of evaluation, not after
        if before is not None:
            before()
        record = harness.evaluate(resolve_model(model), tasks, spec, trust_remote_code=trust_remote_code,
                          show_progress=show_progress)
        record["model"] = fingerprint
        atomic_write_json(path, record)
        return record, path, True
