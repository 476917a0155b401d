"""The shipped embedded model, and the builder that regenerates it."""
import hashlib
import os
import subprocess
import sys

import pytest

from forgetbench.builtin import MODEL_FILES, builtin_fingerprint, builtin_model_dir
from forgetbench.errors import ForgetbenchError
from forgetbench.models import model_fingerprint
from tests.conftest import REPO


def test_the_embedded_model_ships_whole_and_is_identified_by_its_files():
    path = builtin_model_dir("tiny-llama")
    assert path.is_relative_to(REPO / "forgetbench" / "builtin")
    assert all((path / f).stat().st_size > 0 for f in MODEL_FILES)
    # its id is its content: the same on every machine and library version
    fingerprint = {"builtin": "tiny-llama", "files": builtin_fingerprint("tiny-llama")}
    assert model_fingerprint("builtin:tiny-llama") == fingerprint
    with pytest.raises(ForgetbenchError, match="available: builtin:tiny-llama"):
        builtin_model_dir("tiny-gpt")


# The files of the recipe the shipped weights were built and checked with (the full build
# below passed with them), hashed. The full build takes ~4 minutes on 2 cores, so it runs
# when one of them changes, or with FORGETBENCH_TEST_BUILD=1; the builder's code runs in
# every test session anyway (conftest's tiny_model_dir builds a small model with it).
RECIPE_FILES = ["forgetbench/builtin/build.py", "forgetbench/builtin/pretrain.jsonl", "tools/build_builtin_model.py"]
RECIPE_CHECKED = "4cef9fa2bceaa505"


def recipe_digest() -> str:
    h = hashlib.sha256()
    for name in RECIPE_FILES:
        h.update(name.encode() + b"\0" + (REPO / name).read_bytes())
    return h.hexdigest()[:16]


@pytest.mark.slow
@pytest.mark.skipif(recipe_digest() == RECIPE_CHECKED and os.environ.get("FORGETBENCH_TEST_BUILD") != "1",
                    reason="the recipe is the one the shipped model was built and checked with "
                           "(FORGETBENCH_TEST_BUILD=1 runs the full build anyway)")
def test_the_builder_makes_a_model_that_passes_the_base_score_checks(tmp_path):
    """The full recipe, as tools/build_builtin_model.py runs it before it replaces the shipped
    files (here into a temporary folder): it must know the general tasks (>= 0.9) and not yet
    the target (< 0.4), whatever machine builds it. After changing the recipe, and this test
    passing, set RECIPE_CHECKED to the new recipe_digest()."""
    done = subprocess.run([sys.executable, str(REPO / "tools" / "build_builtin_model.py"), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert f"kept: {tmp_path}" in done.stdout
    assert all((tmp_path / f).exists() for f in MODEL_FILES)
