"""A model folder that ships its own Python code is refused up front unless the suite trusts it."""
import json
import shutil

import pytest

from forgetbench.cli import main
from tests.conftest import suite_dict

# the folder's code: importing it fails, so a command that ran it would not end in one line
_CODE = "raise ImportError('{name} of the model folder ran')\n"


def _with_own_code(src, dst, where: str):
    """A copy of the model folder ``src`` that names classes of its own code in ``where``:
    its config (a model type transformers does not know) or its tokenizer's config."""
    shutil.copytree(src, dst)
    if where == "config.json":
        config = json.loads((dst / "config.json").read_text())
        config.update(model_type="forgetbench_custom", architectures=["CustomForCausalLM"],
                      auto_map={"AutoConfig": "configuration_custom.CustomConfig",
                                "AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"})
        (dst / "config.json").write_text(json.dumps(config))
        files = ("configuration_custom.py", "modeling_custom.py")
    else:
        config = json.loads((dst / "tokenizer_config.json").read_text())
        config.update(tokenizer_class="CustomTokenizer",
                      auto_map={"AutoTokenizer": ["tokenization_custom.CustomTokenizer", None]})
        (dst / "tokenizer_config.json").write_text(json.dumps(config))
        files = ("tokenization_custom.py",)
    for name in files:
        (dst / name).write_text(_CODE.format(name=name))
    return dst


@pytest.mark.parametrize("where", ["config.json", "tokenizer_config.json"])
def test_a_model_that_needs_its_own_code_is_refused_by_every_command_before_any_work(
        where, family_model_dir, write_suite, tmp_path, capsys):
    model = _with_own_code(family_model_dir("llama"), tmp_path / "custom", where)
    path, runs = write_suite(suite_dict(model=str(model))), tmp_path / "runs"
    capsys.readouterr()  # the model build's progress bars
    expected = (f"ships its own Python code (auto_map in its {where}), which forgetbench does not run "
                "unless told to; read that code, then set trust_remote_code: true in the suite")
    for argv, source, field in [
            (["sweep", str(path), "--runs-dir", str(runs)], path, "model"),
            (["sweep", str(path), "--runs-dir", str(runs), "--dry-run"], path, "model"),
            (["train", str(path), "--point", "0" * 12, "--runs-dir", str(runs)], path, "model"),
            (["plan", str(path)], path, "model"),
            (["eval", str(model), "--suite", str(path), "--runs-dir", str(runs)], "forgetbench eval", "MODEL")]:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert err == f"forgetbench: error: {source}: {field}: {model} {expected}\n", argv
    assert not runs.exists()


@pytest.mark.parametrize("model", ["/no/such/model", "./no-such-model", "~/no-such-model", "my model"])
def test_a_missing_local_path_is_not_found_not_taken_for_a_hub_id(model, write_suite, tmp_path, capsys):
    path, runs = write_suite(suite_dict()), tmp_path / "runs"
    assert main(["eval", model, "--suite", str(path), "--runs-dir", str(runs)]) == 2
    assert capsys.readouterr().err == (f"forgetbench: error: forgetbench eval: MODEL: {model}: not found: no such "
                                       "folder; give the folder save_pretrained wrote, or a hub id (org/name)\n")
    assert not runs.exists()
