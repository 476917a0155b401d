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


def test_a_model_folder_is_identified_by_the_content_of_every_file_it_loads(tiny_model_dir, tmp_path, monkeypatch):
    import os

    from forgetbench.models import model_fingerprint

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    seen = [model_fingerprint(str(model))]
    assert model_fingerprint(str(shutil.copytree(model, tmp_path / "moved"))) == seen[0]  # not its path

    def changed() -> bool:
        seen.append(model_fingerprint(str(model)))
        return seen[-1] != seen[-2]

    # what the tokenizer reads for apply_chat_template, beside the weights
    (model / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    assert changed()
    (model / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }}\n{% endfor %}")
    assert changed()
    (model / "additional_chat_templates").mkdir()
    (model / "additional_chat_templates" / "tool_use.jinja").write_text("{{ tools }}")
    assert changed()
    # other weights of the same size and mtime (every checkpoint of one architecture has that
    # size, and cp -p, rsync -a and tar keep the mtime)
    weights = model / "model.safetensors"
    st = weights.stat()
    data = bytearray(weights.read_bytes())
    data[-4:] = bytes(255 - b for b in data[-4:])
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (weights.stat().st_size, weights.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    assert changed()
    # not read by from_pretrained: a Trainer checkpoint inside the folder, hidden files
    for ckpt, own in (("checkpoint-500", "trainer_state.json"), ("checkpoint-1000", "config.json")):
        (model / ckpt).mkdir()
        (model / ckpt / own).write_text("{}")
        shutil.copy(weights, model / ckpt / "model.safetensors")
    (model / ".cache").mkdir()
    (model / ".cache" / "download.lock").write_text("")
    (model / ".gitattributes").write_text("*.safetensors filter=lfs\n")
    assert not changed()
