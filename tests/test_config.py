from pathlib import Path

import pytest

from forgetbench.cli import main
from forgetbench.config import load_suite
from forgetbench.errors import ForgetbenchError
from tests.conftest import SUITES, suite_dict


@pytest.mark.parametrize("path", sorted(SUITES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_suite_validates(path):
    suite = load_suite(path)
    assert suite.points()
    for field in type(suite.data).model_fields:  # every local path made absolute, and there
        source = getattr(suite.data, field)
        local = getattr(source, "dataset", None) if not isinstance(source, Path) else source
        if local is not None and (isinstance(source, Path) or source.is_local()):
            assert Path(local).is_absolute() and Path(local).exists()


def test_paths_resolve_against_the_suite_folder(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # not the repo: relative paths must still resolve
    suite = load_suite(SUITES / "medical.yaml")
    assert suite.data.target == (SUITES / "data/medical_train.jsonl").resolve()
    assert suite.tasks.include_path == ((SUITES / "tasks").resolve(),)


def error_of(path, overrides=()):
    with pytest.raises(ForgetbenchError) as info:
        load_suite(path, overrides)
    msg = str(info.value)
    assert "\n" not in msg
    assert str(path) in msg
    return msg


@pytest.mark.parametrize("mutate, field, hint", [
    (lambda r: r.update(colour="red"), "colour", "unknown field 'colour'; valid fields here:"),
    (lambda r: r["train"].update(batchsize=8), "train.batchsize", "unknown field 'batchsize'; valid fields here:"),
    (lambda r: r["train"].update(batch_size="eight"), "train.batch_size", "valid integer"),
    (lambda r: r["sweep"].update(lr=[1e-4, -1e-3]), "sweep.lr[1]", "greater than 0"),
    (lambda r: r["sweep"].update(mix_ratio=[0.0, 1.0]), "sweep.mix_ratio[1]", "less than 1"),
    (lambda r: r["sweep"].update(regularizer=["l3"]), "sweep.regularizer[0]", "'none', 'l2' or 'ewc'"),
    (lambda r: r["tasks"]["general"][0].pop("category"), "tasks.general", "needs a category"),
    (lambda r: r.pop("model"), "model", "Field required"),
    (lambda r: r.update(name="my suite!"), "name", "should match pattern"),
    (lambda r: r["sweep"].update(schedule=["linear"]), "sweep.schedule[0]", "'cosine' or 'constant'"),
    (lambda r: r["sweep"].update(xi=[0.5]), "sweep.xi[0]", "greater than or equal to 1"),
    (lambda r: (r["sweep"].update(patience=[2]), r["data"].pop("validation")), "(top level)",
     "sweep.patience needs train.eval_every and data.validation"),
    (lambda r: (r["train"].update(track_kl=True), r["train"].pop("eval_every")), "(top level)",
     "train.track_kl needs train.eval_every"),
    (lambda r: r.update(sweep=[{"lr": [1e-3]}, {"lr": [1e-3], "regularizer": ["l3"]}]),
     "sweep[1].regularizer[0]", "'none', 'l2' or 'ewc'"),
    (lambda r: r["sweep"].update(seed=[0.5]), "sweep.seed[0]", "valid integer (got 0.5)"),
    (lambda r: r["sweep"].update(seed=[0, True]), "sweep.seed[1]", "valid integer (got True)"),
    (lambda r: r["sweep"].update(seed=[]), "sweep.seed", "at least 1 item"),
])
def test_schema_errors_name_the_field_and_the_fix(write_suite, mutate, field, hint):
    raw = suite_dict()
    mutate(raw)
    msg = error_of(write_suite(raw))
    assert f": {field}: " in msg
    assert hint in msg


def test_unknown_field_lists_the_valid_ones_of_its_section(write_suite):
    raw = suite_dict()
    raw["train"]["batchsize"] = 8
    msg = error_of(write_suite(raw))
    valid = msg.split("valid fields here: ")[1].split(", ")
    assert "batch_size" in valid and "max_seq_len" in valid and "lr" not in valid


def test_missing_data_file_names_field_and_path(write_suite):
    msg = error_of(write_suite(suite_dict(**{"data.target": "nope/train.jsonl"})))
    assert "data.target: file not found:" in msg and "nope/train.jsonl" in msg


def test_mixing_without_replay_data_is_refused(write_suite):
    raw = suite_dict(**{"sweep.mix_ratio": [0.0, 0.1]})
    raw["data"].pop("replay")
    assert "data.replay is not set" in error_of(write_suite(raw))


def test_bad_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    assert "not valid YAML" in error_of(bad)
    with pytest.raises(ForgetbenchError, match="suite file not found"):
        load_suite(tmp_path / "absent.yaml")


def test_set_overrides_values_and_validates_them(write_suite):
    path = write_suite(suite_dict())
    suite = load_suite(path, ["train.batch_size=4", "sweep.lr=[1e-4, 2e-4]"])
    assert suite.train.batch_size == 4 and suite.sweep[0].lr == [1e-4, 2e-4]
    assert "sweep.lr[0]" in error_of(path, ["sweep.lr=[-1]"])
    assert "unknown field 'nope'" in error_of(path, ["train.nope=1"])
    with pytest.raises(ForgetbenchError, match="expected key=value"):
        load_suite(path, ["train.batch_size"])


def test_grid_varies_lambda_only_where_a_regularizer_is_on(write_suite):
    raw = suite_dict()
    raw["sweep"] = {"lr": [1e-4, 1e-3], "mix_ratio": [0.0], "regularizer": ["none", "l2"],
                    "lam": [0.1, 1.0, 10.0]}
    points = load_suite(write_suite(raw)).points()
    assert len(points) == 2 * (1 + 3)
    assert len(set(points)) == len(points)
    assert all(p.lam == 0.0 for p in points if p.regularizer == "none")


def test_the_regularizer_form_is_decoupled_unless_set_and_only_a_regularised_point_has_one(write_suite):
    from forgetbench.config import Point

    raw = suite_dict()
    raw["sweep"] = {"lr": [1e-3], "regularizer": ["none", "l2", "ewc"], "lam": [1.0],
                    "regularizer_form": ["coupled", "decoupled"]}
    points = load_suite(write_suite(raw)).points()
    assert [(p.regularizer, p.regularizer_form) for p in points] == [
        ("none", None), ("l2", "coupled"), ("l2", "decoupled"), ("ewc", "coupled"), ("ewc", "decoupled")]
    raw["sweep"] = {"lr": [1e-3], "regularizer": ["l2"], "lam": [1.0]}
    [point] = load_suite(write_suite(raw, "default.yaml")).points()
    assert point.regularizer_form == "decoupled" and point.describe()[0].text == "L2-SP λ=1"
    # a point recorded before the forms existed trained with the penalty in the loss; its
    # name says so, as λ means another thing there
    old = Point(**point.model_dump(exclude={"regularizer_form"}))
    assert old.regularizer_form == "coupled" and old.describe()[0].text == "L2-SP λ=1 (coupled)"


def test_a_list_of_grids_joins_their_points_without_duplicates(write_suite):
    raw = suite_dict()
    raw["sweep"] = [{"lr": [1e-4, 1e-3], "mix_ratio": [0.0, 0.1]},
                    {"lr": [1e-3], "regularizer": ["none", "l2", "ewc"], "lam": [1.0, 10.0]},
                    {"lr": [1e-3], "xi": [1.0, 2.6], "schedule": ["constant"]}]
    points = load_suite(write_suite(raw)).points()
    # 4 + (plain 1e-3 shared with the first grid) 4 + (cosine ξ=1 … no: constant) 2
    assert len(points) == 4 + 4 + 2 and len(set(points)) == len(points)
    assert points[0].lr == 1e-4 and points[-1].xi == 2.6 and points[-1].schedule == "constant"
    assert sum(p.regularizer == "ewc" for p in points) == 2


def test_seed_replicates_share_all_but_the_seed_and_train_seed_is_the_unswept_point(write_suite):
    raw = suite_dict(**{"train.seed": 0})
    raw["sweep"] = {"lr": [1e-4, 1e-3], "regularizer": ["none", "l2"], "lam": [1.0], "seed": [0, 1, 2]}
    suite = load_suite(write_suite(raw))
    points = suite.points()
    assert len(points) == 2 * 2 * 3 and len(set(points)) == len(points)
    # the seed-0 replicate is the point of the same grid without seeds
    unswept = load_suite(write_suite(raw, "b.yaml"), ["sweep.seed=null"]).points()
    assert [p for p in points if p.seed is None] == unswept
    assert [p.seed for p in points[:3]] == [None, 1, 2]
    assert {p.model_copy(update={"seed": None}) for p in points} == set(unswept)
    # a replicate trains with its seed in place of train.seed; the others as the suite says
    assert suite.for_point(points[1]).train.seed == 1
    assert suite.for_point(points[0]) is suite
    assert points[2].label() == "lr 0.0001, epochs 1, mix 0, seed 2"
    assert points[2].describe() == []  # a replicate of plain training is plain


def test_set_addresses_one_grid_of_a_list(write_suite):
    raw = suite_dict()
    raw["sweep"] = [{"lr": [1e-4]}, {"lr": [1e-3], "regularizer": ["l2"], "lam": [1.0]}]
    path = write_suite(raw)
    suite = load_suite(path, ["sweep.1.lam=[3.0, 30.0]"])
    assert [p.lam for p in suite.points()] == [0.0, 3.0, 30.0]
    with pytest.raises(ForgetbenchError, match="sweep.2: expected an index below 2"):
        load_suite(path, ["sweep.2.lr=[1]"])
    assert "sweep[1].lam[0]" in error_of(path, ["sweep.1.lam=[-1]"])


def test_cli_user_error_is_one_line_exit_2_and_writes_nothing(write_suite, tmp_path, capsys):
    raw = suite_dict()
    raw["sweep"]["lr"] = [-0.001]
    runs = tmp_path / "runs"
    code = main(["sweep", str(write_suite(raw)), "--runs-dir", str(runs)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("forgetbench: error:")
    assert "sweep.lr[0]" in err and "Traceback" not in err
    assert not runs.exists()


def test_unknown_task_is_refused_before_anything_runs(write_suite, tmp_path, capsys):
    raw = suite_dict()
    raw["tasks"]["general"][0]["name"] = "fb_capitls"
    runs = tmp_path / "runs"
    assert main(["sweep", str(write_suite(raw)), "--runs-dir", str(runs)]) == 2
    err = capsys.readouterr().err
    assert "unknown lm-eval task 'fb_capitls'" in err and "fb_capitals" in err
    assert not runs.exists()


def test_bad_data_row_is_refused_with_file_and_line(write_suite, tmp_path, capsys):
    data = tmp_path / "train.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n{"question": "x"}\n')
    runs = tmp_path / "runs"
    path = write_suite(suite_dict(**{"data.target": str(data)}))
    assert main(["sweep", str(path), "--runs-dir", str(runs)]) == 2
    assert f"{data}:2:" in capsys.readouterr().err
    assert not runs.exists()


def test_a_point_names_its_mitigations_in_the_reports_order():
    from forgetbench.config import Point, mitigation_kinds

    plain = Point(lr=1e-3, epochs=1, mix_ratio=0.0, regularizer="none", lam=0.0)
    assert plain.mitigations() == []
    every = plain.model_copy(update={"mix_ratio": 0.1, "regularizer": "ewc", "lam": 10.0, "xi": 2.6, "patience": 2})
    assert every.mitigations() == ["replay", "ewc", "xi", "patience"]
    assert [k for k in mitigation_kinds() if k in every.mitigations()] == every.mitigations()
    assert plain.model_copy(update={"regularizer": "l2", "lam": 1.0}).mitigations() == ["l2"]


def test_a_suite_with_a_byte_that_is_not_utf8_is_one_line_naming_file_and_line(tmp_path, capsys):
    path = tmp_path / "suite.yaml"
    path.write_bytes(b"name: medical\n# caf\xe9\nmodel: builtin:tiny-llama\n")
    runs = tmp_path / "runs"
    assert main(["sweep", str(path), "--runs-dir", str(runs)]) == 2
    err = capsys.readouterr().err
    assert err == f"forgetbench: error: {path}: not UTF-8 text at line 2 (byte 0xe9); save the file as UTF-8\n"
    assert not runs.exists()


def test_a_data_path_that_is_a_folder_without_data_is_refused_naming_the_field(write_suite, tmp_path, capsys):
    folder = tmp_path / "replay"
    folder.mkdir()
    path = write_suite(suite_dict(**{"data.replay": str(folder)}))
    runs = tmp_path / "runs"
    assert main(["sweep", str(path), "--runs-dir", str(runs)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{path}: data.replay: {folder} is a folder with no data in it" in err
    assert not runs.exists()




def _with_sweep(write_suite, sweep_text: str, name: str) -> Path:
    """The test suite with its sweep section written as ``sweep_text``: YAML that safe_dump
    would not write (anchors, aliases, merges)."""
    raw = suite_dict()
    raw.pop("sweep")
    path = write_suite(raw, name)
    path.write_text(path.read_text() + sweep_text)
    return path


def test_a_value_echoed_in_an_error_is_cut_however_big_it_is(write_suite):
    """A YAML anchor bomb: ~300 bytes whose aliases nest lists in lists; the repr of sweep.lr[0]
    is ~90 KB (10 000 floats, and each level more multiplies that by 10). Its error echoes it
    in a few hundred characters."""
    value = "[" + ", ".join(["1.0e-3"] * 10) + "]"
    for level in range(3):
        value = f"[&a{level} {value}" + f", *a{level}" * 9 + "]"
    path = _with_sweep(write_suite, f"sweep:\n  lr: [{value}]\n", "bomb.yaml")
    msg = error_of(path)
    assert msg.startswith(f"{path}: sweep.lr[0]: Input should be a valid number (got [[[[0.001, 0.001"), msg
    assert len(msg) < 400, len(msg)


def test_a_key_given_twice_is_refused_naming_the_file_the_key_and_its_line(write_suite, tmp_path):
    from forgetbench.config import load_cluster
    from forgetbench.gate import load_gate

    path = _with_sweep(write_suite, "sweep:\n  lr: [1.0e-3]\n  epochs: [1]\n  lr: [2.0e-3]\n", "twice.yaml")
    at = path.read_text().splitlines().index("sweep:") + 1
    assert error_of(path) == (f"{path}: not valid YAML at line {at + 3}: key 'lr' is given twice in one "
                              f"mapping (first at line {at + 1}); keep one")
    # a key that a << merge brings and the mapping sets again is YAML's override, not a duplicate
    merged = _with_sweep(write_suite, "sweep:\n  - &grid {lr: [1.0e-3], epochs: [1]}\n"
                         "  - {<<: *grid, lr: [2.0e-3]}\n", "merged.yaml")
    assert [p.lr for p in load_suite(merged).points()] == [1.0e-3, 2.0e-3]
    gate, cluster = tmp_path / "gate.yaml", tmp_path / "cluster.yaml"
    gate.write_text("rules:\n  - {role: general, margin: 2, margin: 3}\n")
    cluster.write_text("time: 60\npartition: a\ntime: 90\n")
    with pytest.raises(ForgetbenchError, match=rf"^{gate}: not valid YAML at line 2: key 'margin' is given twice"):
        load_gate(gate)
    with pytest.raises(ForgetbenchError, match=rf"^{cluster}: not valid YAML at line 3: key 'time' is given twice"):
        load_cluster(cluster)
    with pytest.raises(ForgetbenchError, match=r"--set sweep: value .* not valid YAML \(key 'lr' is given twice"):
        load_suite(merged, ["sweep={lr: [1.0], lr: [2.0]}"])


def test_a_suite_path_that_is_a_folder_is_refused_as_a_folder(tmp_path, capsys):
    (tmp_path / "medical.yaml").write_text("name: x\n")
    assert main(["sweep", str(tmp_path), "--runs-dir", str(tmp_path / "runs")]) == 2
    assert capsys.readouterr().err == (f"forgetbench: error: {tmp_path}: a folder, not a suite file; give the "
                                       "YAML file itself (it holds medical.yaml)\n")
    assert not (tmp_path / "runs").exists()
