"""Shared fixtures: a tiny model built by the real builder, and suites written to tmp dirs."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
SUITES = REPO / "suites"

# Small enough to build in seconds; same code path as the embedded default.
TINY = dict(vocab_size=300, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2,
            seq_len=32, batch_size=8, steps=40, warmup_steps=5)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """An ordinary HF model directory (config, safetensors, tokenizer) of a ~30k-param Llama."""
    from forgetbench.builtin.build import TinyLlamaRecipe, build_tiny_llama

    out = tmp_path_factory.mktemp("tiny-model")
    build_tiny_llama(dataclasses.replace(TinyLlamaRecipe(), **TINY), out)
    return out


def suite_dict(**overrides) -> dict:
    """The default suite as a dict with absolute paths, for writing variants to tmp dirs."""
    raw = yaml.safe_load((SUITES / "medical.yaml").read_text())
    raw["data"] = {k: str((SUITES / v).resolve()) for k, v in raw["data"].items()}
    raw["gate"] = str((SUITES / raw["gate"]).resolve())
    if isinstance(raw["sweep"], list):  # tests vary one plain grid
        raw["sweep"] = raw["sweep"][0]
    raw["tasks"]["include_path"] = str(SUITES / "tasks")
    for key, value in overrides.items():
        node = raw
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return raw


@pytest.fixture
def write_suite(tmp_path):
    def write(raw: dict, name: str = "suite.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        return path
    return write


@pytest.fixture(scope="session")
def family_model_dir(tmp_path_factory):
    """family -> the folder of a tiny random-weight model of that family with its own
    tokenizer (tests/families.py: llama, qwen2, mistral, gemma3, phi3, gpt2), built once."""
    from tests.families import build_family_model

    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in built:
            built[family] = build_family_model(family, tmp_path_factory.mktemp(f"model-{family}"))
        return built[family]
    return get
