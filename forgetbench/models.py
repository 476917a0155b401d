"""Base models in the forms a suite or a command names them: ``builtin:NAME`` (shipped with
the package), a local Hugging Face folder, or a hub id. Resolve, fingerprint and check them
here; every ``from_pretrained`` in forgetbench passes ``trust_remote_code`` from the suite,
so a model folder's own Python code runs only when the suite says so.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from forgetbench.builtin import BUILTIN_PREFIX, builtin_fingerprint, builtin_model_dir
from forgetbench.errors import ForgetbenchError
from forgetbench.store import json_digest

# the files of a local model folder that identify it (not its path: a moved model keeps its points)
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".json", ".model", ".txt")


def model_fingerprint(model: str) -> dict[str, Any]:
    """What identifies a base model without loading it: the hash of a builtin model's shipped
    files, the files (name, size, mtime) of a local folder, or a hub id with the revision the
    local Hugging Face cache holds."""
    if model.startswith(BUILTIN_PREFIX):
        name = model[len(BUILTIN_PREFIX):]
        return {"builtin": name, "files": builtin_fingerprint(name)}
    path = Path(model)
    if path.is_dir():
        files = {f.name: [f.stat().st_size, f.stat().st_mtime_ns]
                 for f in sorted(path.iterdir()) if f.is_file() and f.suffix in _WEIGHT_SUFFIXES}
        if "config.json" not in files:
            raise ForgetbenchError(f"model: {path} has no config.json; point it at a Hugging "
                                   "Face model directory (the output of save_pretrained)")
        return {"dir_files": json_digest(files)[:16]}
    return {"hub": model, **_hub_revision(model)}


def _hub_revision(model: str) -> dict[str, str]:
    """The commit of a hub model as the local Hugging Face cache holds it (its snapshot
    folder), so a new revision is a new model; nothing when it is not cached yet."""
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(model, "config.json")
    return {"revision": Path(cached).parent.name} if isinstance(cached, str) else {}


def model_hash(model: str) -> str:
    """A short hash of :func:`model_fingerprint`, for file names."""
    return json_digest(model_fingerprint(model))[:8]


def resolve_model(model: str) -> Path | str:
    """A directory or hub id that ``from_pretrained`` loads."""
    if model.startswith(BUILTIN_PREFIX):
        return builtin_model_dir(model[len(BUILTIN_PREFIX):])
    return model


def check_model(model: str, source: str, *, field: str = "model",
                trust_remote_code: bool = False) -> None:
    """Refuse, in one line naming ``source`` and ``field``, a model whose config cannot be read
    here: a hub id with no network and not in the Hugging Face cache, a folder that is no
    model, or one that ships its own code while the suite does not trust it."""
    from transformers import AutoConfig

    if model.startswith(BUILTIN_PREFIX):
        builtin_model_dir(model[len(BUILTIN_PREFIX):])  # a known name, shipped whole
        return
    try:
        AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        if "trust_remote_code" in str(exc):
            raise ForgetbenchError(
                f"{source}: {field}: {model} ships its own Python code (auto_map in its config), "
                "which forgetbench does not run unless told to; read that code, then set "
                "trust_remote_code: true in the suite") from None
        reason = " ".join(str(exc).split()).split(". ")[0].rstrip(".")[:300]  # its first sentence
        fix = ("set it to a folder written by save_pretrained (config.json and weights)"
               if Path(model).is_dir() else
               f"with no network here, download it where there is one (hf download {model}) and "
               "copy the Hugging Face cache, or set it to a local save_pretrained folder")
        raise ForgetbenchError(f"{source}: {field}: cannot load {model} ({reason}); {fix}") from None
