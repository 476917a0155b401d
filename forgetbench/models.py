"""Base models in the forms a suite or a command names them: ``builtin:NAME`` (shipped with
the package), a local Hugging Face folder, or a hub id. Resolve, fingerprint and check them
here; every ``from_pretrained`` in forgetbench passes ``trust_remote_code`` from the suite,
so a model folder's own Python code runs only when the suite says so.
"""
from __future__ import annotations

import json
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


def _names_tokenizer_code(model: str, config) -> bool:
    """The model names a tokenizer class of its own code: ``auto_map`` in its config, or in
    its tokenizer_config.json (in its folder, or the local Hugging Face cache)."""
    if "AutoTokenizer" in (getattr(config, "auto_map", None) or {}):
        return True
    path: Path | None = Path(model) / "tokenizer_config.json"
    if not Path(model).is_dir():
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model, "tokenizer_config.json")
        path = Path(cached) if isinstance(cached, str) else None
    if path is None or not path.is_file():
        return False
    auto_map = json.loads(path.read_text()).get("auto_map")
    # a list is the older form: (slow class, fast class), both of its own code
    return isinstance(auto_map, list) or "AutoTokenizer" in (auto_map or {})


def check_model(model: str, source: str, *, field: str = "model",
                trust_remote_code: bool = False) -> None:
    """Refuse, in one line naming ``source`` and ``field``, a model whose config cannot be read
    here: a hub id with no network and not in the Hugging Face cache, a folder that is no
    model, or one whose model or tokenizer needs its own code while the suite does not trust
    it. Whether it needs that code is transformers' decision: a folder that names code of its
    own (``auto_map``) for a class transformers has (Phi-3's checkpoints) loads without it."""
    from transformers import AutoConfig, AutoTokenizer

    if model.startswith(BUILTIN_PREFIX):
        builtin_model_dir(model[len(BUILTIN_PREFIX):])  # a known name, shipped whole
        return
    reading = "config.json"
    try:
        config = AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code)
        if not trust_remote_code and _names_tokenizer_code(model, config):
            reading = "tokenizer_config.json"  # loaded only then: a big tokenizer takes seconds
            AutoTokenizer.from_pretrained(model, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        if "trust_remote_code" in str(exc):
            raise ForgetbenchError(
                f"{source}: {field}: {model} ships its own Python code (auto_map in its {reading}), "
                "which forgetbench does not run unless told to; read that code, then set "
                "trust_remote_code: true in the suite") from None
        reason = " ".join(str(exc).split()).split(". ")[0].rstrip(".")[:300]  # its first sentence
        fix = ("set it to a folder written by save_pretrained (config.json and weights)"
               if Path(model).is_dir() else
               f"with no network here, download it where there is one (hf download {model}) and "
               "copy the Hugging Face cache, or set it to a local save_pretrained folder")
        raise ForgetbenchError(f"{source}: {field}: cannot load {model} ({reason}); {fix}") from None
