"""The embedded default models (``builtin:tiny-llama``): weights shipped with the package.

Each one is an ordinary Hugging Face model directory inside the package
(``forgetbench/builtin/<name>/``: config, safetensors, tokenizer), so every machine starts
fine-tuning from the same base and nothing is built or downloaded at run time. Its
fingerprint is the hash of those files. ``build.py`` holds the recipe that made them;
``tools/build_builtin_model.py`` rebuilds and checks them.
"""
from __future__ import annotations

import hashlib
from functools import lru_cache
from importlib import resources
from pathlib import Path

from forgetbench.errors import ForgetbenchError, shown

BUILTIN_PREFIX = "builtin:"
NAMES = ("tiny-llama",)
# the files that make a shipped model: what from_pretrained reads, hashed into its fingerprint
MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
               "tokenizer_config.json")


def builtin_model_dir(name: str) -> Path:
    """The shipped HF directory of ``builtin:<name>``."""
    if name not in NAMES:
        raise ForgetbenchError(f"model: unknown builtin model {shown(BUILTIN_PREFIX + name)}; "
                               f"available: {', '.join(BUILTIN_PREFIX + n for n in NAMES)}")
    path = Path(str(resources.files("forgetbench.builtin").joinpath(name)))
    missing = [f for f in MODEL_FILES if not (path / f).is_file()]
    if missing:  # a broken install or checkout, not a user's mistake in a suite
        raise ForgetbenchError(f"{path}: the shipped model {BUILTIN_PREFIX}{name} lacks "
                               f"{', '.join(missing)}; reinstall forgetbench, or rebuild it with "
                               "`python tools/build_builtin_model.py`")
    return path


@lru_cache(maxsize=len(NAMES))
def builtin_fingerprint(name: str) -> str:
    """A hash of the shipped files' names and contents (a few MB, read once per process)."""
    path = builtin_model_dir(name)
    h = hashlib.sha256()
    for f in MODEL_FILES:
        h.update(f.encode() + b"\0" + (path / f).read_bytes())
    return h.hexdigest()[:16]
