"""The shipped embedded model, and the builder that regenerates it."""
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


@pytest.mark.slow
def test_the_builder_makes_a_model_that_passes_the_base_score_checks(tmp_path):
    """The full recipe, as tools/build_builtin_model.py runs it before it replaces the shipped
    files (here into a temporary folder): it must know the general tasks (>= 0.9) and not yet
    the target (< 0.4), whatever machine builds it."""
    done = subprocess.run([sys.executable, str(REPO / "tools" / "build_builtin_model.py"), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert f"kept: {tmp_path}" in done.stdout
    assert all((tmp_path / f).exists() for f in MODEL_FILES)
