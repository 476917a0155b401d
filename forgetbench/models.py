"""Base models in the forms a suite or a command names them: ``builtin:NAME`` (shipped with
the package), a local Hugging Face folder, or a hub id. Resolve, fingerprint and check them
here; every ``from_pretrained`` in forgetbench passes ``trust_remote_code`` from the suite,
so a model folder's own Python code runs only when the suite says so.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from forgetbench.builtin import BUILTIN_PREFIX, builtin_fingerprint, builtin_model_dir
from forgetbench.errors import ForgetbenchError
from forgetbench.store import file_hashes, json_digest


def model_fingerprint(model: str) -> dict[str, Any]:
    """What identifies a base model without loading it: the hash of a builtin model's shipped
    files, the content of a local folder's files (:func:`model_files`: names and sha256, not
    its path, so a moved model keeps its points), or a hub id with the revision the local
    Hugging Face cache holds."""
    if model.startswith(BUILTIN_PREFIX):
        name = model[len(BUILTIN_PREFIX):]
        return {"builtin": name, "files": builtin_fingerprint(name)}
    path = Path(model)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ForgetbenchError(f"model: {path} has no config.json; point it at a Hugging "
                                   "Face model directory (the output of save_pretrained)")
        files = model_files(path)
        names = [f.relative_to(path).as_posix() for f in files]
        return {"dir_content": json_digest(list(zip(names, file_hashes(files))))[:16]}
    return {"hub": model, **_hub_revision(model)}


def model_files(path: Path) -> list[Path]:
    """The files of local model folder ``path`` that make the model: every file that
    from_pretrained, its tokenizer or its chat template may read (weights, configs, tokenizer
    files, chat_template.jinja, additional_chat_templates/, the model's own code), that is all
    its files but hidden ones, and but the folders inside it that are checkpoints of their own
    (with their own config.json or trainer_state.json, as HF Trainer's checkpoint-N/), which
    from_pretrained never reads and which are as big as the model."""
    out = []
    for folder, dirs, files in os.walk(path):
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__"
                         and not any((here / d / own).is_file() for own in ("config.json", "trainer_state.json")))
        out += [here / f for f in sorted(files) if not f.startswith(".") and (here / f).is_file()]
    return out


def _hub_revision(model: str) -> dict[str, str]:
    """The commit of a hub model as the local Hugging Face cache holds it (its snapshot
    folder), so a new revision is a new model; nothing when it is not cached yet."""
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(model, "config.json")
    return {"revision": Path(cached).parent.name} if isinstance(cached, str) else {}


# What from_pretrained reads of a hub model (config, safetensors weights, tokenizer, chat
# template), not a repository's other copies of the weights (Llama's original/*.pth, GGUF ...)
HUB_MODEL_FILES = ("*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken")
_WEIGHT_FILES = ("model.safetensors.index.json", "model.safetensors",
                 "pytorch_model.bin.index.json", "pytorch_model.bin")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tiktoken.model")


def is_hub_id(model: str) -> bool:
    """A model the Hugging Face hub serves: not ``builtin:``, not a local folder, and spelt as
    the hub spells its ids (``name`` or ``org/name``; a path such as /abs, ./x or ~/x is not one)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if model.startswith(BUILTIN_PREFIX) or Path(model).is_dir():
        return False
    try:
        validate_repo_id(model)
    except HFValidationError:
        return False
    return True


def missing_from_cache(model: str) -> list[str]:
    """What of hub model ``model`` the local Hugging Face cache lacks to load it without the
    hub: ``config``, ``weights`` (every shard its index names), ``tokenizer``; nothing for a
    model it holds whole, a ``builtin:`` one or a local folder. Reads the cache only."""
    if not is_hub_id(model):
        return []
    from huggingface_hub import try_to_load_from_cache

    config = try_to_load_from_cache(model, "config.json")
    if not isinstance(config, str):
        return ["config", "weights", "tokenizer"]
    snapshot = Path(config).parent
    missing = []
    weights = next((snapshot / name for name in _WEIGHT_FILES if (snapshot / name).exists()), None)
    if weights is None or (weights.name.endswith(".index.json") and not all(
            (snapshot / shard).exists() for shard in json.loads(weights.read_text())["weight_map"].values())):
        missing.append("weights")
    if not any((snapshot / name).exists() for name in _TOKENIZER_FILES):
        missing.append("tokenizer")
    return missing


def fetch_model(model: str, trust_remote_code: bool = False) -> Path:
    """Download hub model ``model``'s files that from_pretrained reads into the local Hugging
    Face cache (huggingface_hub's ``snapshot_download``, as ``hf download`` does); its snapshot
    folder. A model without safetensors weights gets its ``*.bin`` ones."""
    from huggingface_hub import snapshot_download

    patterns = [*HUB_MODEL_FILES, *(["*.py"] if trust_remote_code else [])]
    folder = Path(snapshot_download(model, allow_patterns=patterns))
    if "weights" in missing_from_cache(model):
        snapshot_download(model, allow_patterns=["*.bin"])
    return folder


def cache_command(model: str) -> str:
    """An ``hf download`` command that caches what :func:`fetch_model` downloads (and more: every
    file of the repository but Llama's original checkpoint)."""
    return f"hf download {model} --exclude 'original/*'"


def ensure_cached(model: str, source: str, *, trust_remote_code: bool = False) -> None:
    """Before a sweep starts its jobs: a hub model whole in the local Hugging Face cache,
    downloaded now when the hub is reachable (once, for every job that reads it, which on a
    cluster may run where the hub is not). When it cannot be, one line naming ``source`` (the
    suite file) and the command that caches it."""
    if not missing_from_cache(model):
        return
    reason = ""
    try:
        fetch_model(model, trust_remote_code)
    except Exception as exc:  # offline, unreachable, gated, no such repository ...
        first = (" ".join(str(exc).split()).split(". ") or [""])[0][:200]
        reason = f" ({type(exc).__name__}: {first})" if first else f" ({type(exc).__name__})"
        if type(exc).__name__ == "GatedRepoError":
            reason += ("; it is gated: accept its license on its hub page, then log in with "
                       "`hf auth login`")
    missing = missing_from_cache(model)
    if missing:
        from huggingface_hub import constants

        reason = reason or (" (HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE else "")
        raise ForgetbenchError(
            f"{source}: model: {model}: its {' and '.join(missing)} are not in the local Hugging Face "
            f"cache ({constants.HF_HUB_CACHE}) and could not be downloaded{reason}; where the hub is "
            f"reachable, run `forgetbench cache {source}` (or `{cache_command(model)}`) with the same "
            "HF_HOME, or copy that cache here")


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
    if not is_hub_id(model) and not Path(model).exists():
        raise ForgetbenchError(f"{source}: {field}: {model}: not found: no such folder; give the folder "
                               "save_pretrained wrote, or a hub id (org/name)")
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
        suite = source if source.endswith((".yaml", ".yml")) else "SUITE"
        fix = ("set it to a folder written by save_pretrained (config.json and weights)"
               if not is_hub_id(model) else
               f"with no network here, cache it where there is one and copy the Hugging Face cache "
               f"(`hf download {model} config.json` is enough for `forgetbench plan` and `sweep "
               f"--dry-run`; `forgetbench cache {suite}` caches all a sweep reads), or set it to a "
               "local save_pretrained folder")
        raise ForgetbenchError(f"{source}: {field}: cannot load {model} ({reason}); {fix}") from None
