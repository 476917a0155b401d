"""`forgetbench compare` on evaluation records written here: pairing, statistics, the gate and
its exit codes, the comparability guard, and the three outputs (the browser test opens the
HTML). The end-to-end comparison against the default sweep's points is in
test_default_suite.py."""
import json

import pytest
import yaml

from forgetbench.cli import main
from tests.browser import browser_available, open_page
from tests.conftest import suite_dict

SETTINGS = {"tasks": {}, "num_fewshot": None, "limit": None, "batch_size": 64, "dtype": "float32",
            "device_type": "cpu", "confirm_run_unsafe_code": False, "apply_chat_template": False,
            "clusters": {}, "versions": {"lm_eval": "x", "transformers": "y", "torch": "z"}, "eval_version": 2}


def record(values: dict[str, list[float]], *, metric: dict[str, str], answer="a", **settings) -> dict:
    """An evaluation record of per-item 0/1 values per task, as the harness writes one."""
    tasks = {}
    for task, vals in values.items():
        m = metric[task]
        tasks[task] = {"metrics": {m: {"value": sum(vals) / len(vals), "stderr": None, "higher_is_better": True}},
                       "n": len(vals), "samples": [
                           {"doc_id": i, "doc_hash": f"{task}-{i}", "prompt_hash": f"p{i}", "target_hash": f"t{i}",
                            "prompt": f"<b>question</b> {i} | pipe", "target": "gold",
                            "cluster": str(i // 3), "responses": {"none": f"{answer}{i}"}, "values": {m: v}}
                           for i, v in enumerate(vals)]}
    return {"eval_key": "k", "settings": {**SETTINGS, **settings}, "model": {"kind": "test"},
            "tokenization": {"tokenizer": "tok", "add_bos_token": None}, "tasks": tasks}


METRIC = {"fb_medical": "acc", "fb_capitals": "acc", "fb_addition": "exact_match", "fb_code": "exact_match"}


def scores(target=0.25, capitals=1.0, addition=0.95, code=0.95, n=120) -> dict[str, list[float]]:
    def items(p):
        return [1.0 if i < round(p * n) else 0.0 for i in range(n)]
    return {"fb_medical": items(target), "fb_capitals": items(capitals), "fb_addition": items(addition),
            "fb_code": items(code)}


@pytest.fixture
def env(tmp_path, write_suite):
    raw = suite_dict()
    raw.pop("gate")  # the default gate: no task may lose 2 points
    raw["tasks"]["target"] = [{"name": "fb_medical", "metric": "acc", "cluster": "drug"}]
    suite = write_suite(raw)

    def write(name: str, rec: dict):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(rec))
        return str(path)

    def compare(base: dict, cand: dict, *extra: str) -> tuple[int, dict | None]:
        out = tmp_path / "out"
        code = main(["compare", write("base", base), write("cand", cand), "--suite", str(suite),
                     "--out", str(out), "--runs-dir", str(tmp_path / "runs"), *extra])
        result = json.loads((out / "compare.json").read_text()) if (out / "compare.json").exists() else None
        return code, result

    return compare, tmp_path, suite


def test_identical_evaluations_give_zero_delta_mcnemar_one_and_pass(env, capsys):
    compare, tmp_path, _ = env
    rec = record(scores(), metric=METRIC)
    code, result = compare(rec, rec)
    assert code == 0 and result["verdict"] == "PASS"
    for task in result["tasks"]:
        m = task["metrics"][0]
        assert m["delta"] == 0 and m["delta_ci"] == [0, 0] and m["mcnemar_p"] == 1.0
        assert m["worse"] == m["better"] == 0
    assert result["flips"] == [] and result["mismatch"] == []
    # clusters declared for the target: resampled by cluster, counted
    medical = next(t for t in result["tasks"] if t["task"] == "fb_medical")["metrics"][0]
    assert medical["clusters"] == 40 and medical["n"] == 120
    out = capsys.readouterr().out
    table = out.rsplit("\n\n", 1)[0]  # the files' path comes last
    assert "verdict: PASS" in out and all(len(line) <= 100 for line in table.splitlines())
    # the 120-item tasks cannot see a small loss, and say so
    assert all(t["metrics"][0]["mde"] > 0.05 for t in result["tasks"])


def test_a_candidate_that_forgets_fails_the_gate_naming_the_rule(env, capsys):
    compare, tmp_path, _ = env
    code, result = compare(record(scores(), metric=METRIC),
                           record(scores(target=0.8, addition=0.5), metric=METRIC))
    assert code == 1 and result["verdict"] == "FAIL"
    failed = [r for r in result["rules"] if not r["passed"]]
    assert [r["task"] for r in failed] == ["fb_addition"]
    assert "fb_addition" in capsys.readouterr().err
    add = next(t for t in result["tasks"] if t["task"] == "fb_addition")["metrics"][0]
    assert add["worse"] == 54 and add["better"] == 0 and add["mcnemar_p"] < 1e-10
    assert add["delta_ci"][1] < -0.3
    flips = [f for f in result["flips"] if f["task"] == "fb_addition"]
    assert len(flips) == 54 and {f["direction"] for f in flips} == {"worse"}
    # the target's improvement is not a flip to hide: it is listed as better
    assert {f["direction"] for f in result["flips"] if f["task"] == "fb_medical"} == {"better"}
    md = (tmp_path / "out" / "compare.md").read_text()
    assert "FAIL" in md and "| fb\\_addition |" in md.replace("**", "")  # _ escaped: Markdown emphasis


def test_a_gate_file_with_superiority_and_holm(env, tmp_path):
    compare, tmp_path, _ = env
    gate = tmp_path / "gate.yaml"
    gate.write_text(yaml.safe_dump({"alpha": 0.025, "rules": [
        {"role": "general", "test": "non_inferior", "margin": 5},
        {"task": "fb_medical", "test": "superior", "margin": 10}]}))
    base = record(scores(), metric=METRIC)
    code, result = compare(base, record(scores(target=0.8, code=0.94), metric=METRIC), "--gate", str(gate))
    assert code == 0, [r for r in result["rules"] if not r["passed"]]
    assert len(result["rules"]) == 4
    assert all(r["p_holm"] >= r["p"] for r in result["rules"])
    # no improvement: the superiority rule fails
    code, result = compare(base, base, "--gate", str(gate))
    assert code == 1 and [r["task"] for r in result["rules"] if not r["passed"]] == ["fb_medical"]


def test_different_eval_settings_are_refused_unless_forced(env, capsys):
    compare, tmp_path, _ = env
    base = record(scores(), metric=METRIC)
    code, result = compare(base, record(scores(), metric=METRIC, batch_size=32))
    err = capsys.readouterr().err
    assert code == 2 and result is None
    assert "batch_size 64 vs 32" in err and "--force" in err and len(err.strip().splitlines()) == 1
    code, result = compare(base, record(scores(), metric=METRIC, batch_size=32), "--force")
    assert code == 0 and result["mismatch"] == ["batch_size 64 vs 32"]
    assert "Not comparable" in (tmp_path / "out" / "compare.md").read_text()
    assert "Not comparable" in (tmp_path / "out" / "compare.html").read_text()


def test_a_different_tokenizer_or_prompt_is_refused(env, capsys):
    compare, _, _ = env
    base = record(scores(), metric=METRIC)
    other = record(scores(), metric=METRIC)
    other["tokenization"]["tokenizer"] = "another"
    assert compare(base, other)[0] == 2
    assert "tokenization.tokenizer" in capsys.readouterr().err
    other = record(scores(), metric=METRIC)
    other["tasks"]["fb_code"]["samples"][3]["prompt_hash"] = "changed"
    assert compare(base, other)[0] == 2
    assert "fb_code: document 3 was asked differently (prompt_hash differs)" in capsys.readouterr().err


@pytest.mark.parametrize("gate, message", [
    ({"rules": [{"role": "general", "margn": 2}]}, "rules[0].margn: unknown field 'margn'; valid fields here"),
    ({"rules": [{"task": "fb_nothing"}]}, "rules[0]: task 'fb_nothing' matches no task"),
    ({"rules": [{"task": "fb_code", "role": "general"}]}, "exactly one of task, category or role"),
    ({"rules": []}, "rules: List should have at least 1 item"),
])
def test_a_bad_gate_file_is_one_line_exit_2(env, tmp_path, capsys, gate, message):
    compare, tmp_path, _ = env
    path = tmp_path / "gate.yaml"
    path.write_text(yaml.safe_dump(gate))
    rec = record(scores(), metric=METRIC)
    code, result = compare(rec, rec, "--gate", str(path))
    err = capsys.readouterr().err.strip()
    assert code == 2 and result is None
    assert message in err and str(path) in err and len(err.splitlines()) == 1


@pytest.mark.skipif(not browser_available(), reason="needs chromium, chromedriver and selenium (.ci/run installs them)")
def test_compare_html_in_a_browser(env, tmp_path):
    compare, tmp_path, _ = env
    code, _ = compare(record(scores(), metric=METRIC),
                      record(scores(target=0.8, addition=0.5), metric=METRIC, answer="<script>alert(2)</script>"))
    assert code == 1
    with open_page(tmp_path / "out" / "compare.html") as page:
        assert page.console_errors == [] and page.failed_requests == [] and page.dialogs == []
        assert all(img["decoded"] for img in page.images()) and page.images()
        assert page.text(".verdict").startswith("FAIL")
        total = page.visible_count("#flips tbody tr")
        assert total == 54 + 66  # addition worse, medical better
        page.select("#flip-direction", "worse")
        assert page.visible_count("#flips tbody tr") == 54
        page.select("#flip-direction", "")
        page.select("#flip-task", "fb_medical")
        assert page.visible_count("#flips tbody tr") == 66
        assert page.text("#flips-shown") == "66"
        # a model's answer with markup is text, and ran nothing
        assert "<script>alert(2)</script>" in page.run(
            "document.querySelector('#flips tbody tr:not([hidden]) td:nth-child(7)').textContent")
        assert page.text("#flips tbody tr:not([hidden]) td:nth-child(4)").startswith("<b>question</b>")


@pytest.mark.skipif(not browser_available(), reason="needs chromium, chromedriver and selenium (.ci/run installs them)")
def test_a_task_name_with_markup_is_text_in_every_output(tmp_path, write_suite):
    name = "<script>alert(3)</script>"
    raw = suite_dict()
    raw["tasks"]["general"] = [{"name": name, "category": "<b>qa</b>", "metric": "acc"}]
    suite = write_suite(raw)
    metric = {"fb_medical": "acc", name: "acc"}
    base = record({"fb_medical": [0.0] * 30, name: [1.0] * 30}, metric=metric)
    cand = record({"fb_medical": [1.0] * 30, name: [1.0] * 20 + [0.0] * 10}, metric=metric)
    for side, rec in (("base", base), ("cand", cand)):
        (tmp_path / f"{side}.json").write_text(json.dumps(rec))
    out = tmp_path / "out"
    assert main(["compare", str(tmp_path / "base.json"), str(tmp_path / "cand.json"), "--suite", str(suite),
                 "--out", str(out)]) == 1
    assert name not in (out / "compare.html").read_text() and name not in (out / "compare.md").read_text()
    with open_page(out / "compare.html") as page:
        assert page.dialogs == [] and page.console_errors == []
        assert page.run("[...document.querySelectorAll('td')].some(td => td.textContent === " + json.dumps(name) + ")")
        page.select("#flip-task", name)
        assert page.visible_count("#flips tbody tr") == 10


def test_metrics_off_the_0_1_scale_corpus_metrics_and_duplicate_documents(env):
    compare, tmp_path, _ = env
    base, cand = record(scores(), metric=METRIC), record(scores(), metric=METRIC)
    for rec, shift in ((base, 0.0), (cand, 3.0)):
        task = rec["tasks"]["fb_code"]
        task["metrics"]["perplexity"] = {"value": 10.0 + shift, "stderr": None, "higher_is_better": False}
        task["metrics"]["bleu"] = {"value": 30.0, "stderr": None, "higher_is_better": True}  # corpus-level
        for s in task["samples"]:
            s["values"]["perplexity"] = 10.0 + shift
            s["doc_hash"] = "same"  # a dataset holding one document many times
    gate = tmp_path / "gate.yaml"
    gate.write_text(yaml.safe_dump({"rules": [{"task": "fb_code", "metric": "perplexity", "margin": 2}]}))
    code, result = compare(base, cand, "--gate", str(gate))
    code_task = next(t for t in result["tasks"] if t["task"] == "fb_code")
    ppl = next(m for m in code_task["metrics"] if m["metric"] == "perplexity")
    assert ppl["n"] == 120 and ppl["scale"] == 1 and ppl["delta"] == pytest.approx(3.0)
    assert code_task["skipped"] == ["bleu"]
    # 3 units worse than the base with a 2-unit margin (perplexity: lower is better): fails
    [rule] = result["rules"]
    assert code == 1 and rule["delta"] == pytest.approx(-3.0) and rule["threshold"] == -2


def test_a_record_without_items_or_hashes_is_one_line_exit_2(env, capsys):
    compare, _, _ = env
    base = record(scores(), metric=METRIC)
    bare = record(scores(), metric=METRIC)
    for task in bare["tasks"].values():
        task.pop("samples")
    assert compare(base, bare)[0] == 2
    assert "has no per-item results" in capsys.readouterr().err
    old = record(scores(), metric=METRIC)
    for s in old["tasks"]["fb_capitals"]["samples"]:
        s.pop("doc_hash")
    assert compare(base, old)[0] == 2
    assert "predates lm-eval's document hashes" in capsys.readouterr().err


@pytest.mark.parametrize("malform, why", [
    (lambda r: {**r, "settings": list(r["settings"])}, "its settings is a JSON array, not an object"),
    (lambda r: [r], "a JSON array, not an object"),
])
def test_a_given_record_of_another_shape_is_one_line_exit_2(env, capsys, malform, why):
    compare, tmp_path, _ = env
    rec = record(scores(), metric=METRIC)
    assert compare(rec, malform(rec))[0] == 2
    err = capsys.readouterr().err
    assert err == (f"forgetbench: error: {tmp_path / 'cand.json'}: not an evaluation record ({why}); give a "
                   "model, a point, or a file from runs/evals\n")


def test_a_small_task_passing_the_gate_is_marked_underpowered(env):
    compare, _, _ = env
    rec = record(scores(n=30), metric=METRIC)
    code, result = compare(rec, rec)
    assert code == 0 and all(r["underpowered"] for r in result["rules"])


def test_a_record_made_under_other_settings_is_refused_before_the_model_is_evaluated(env, tmp_path, capsys):
    _, tmp_path, suite = env
    path = tmp_path / "other.json"
    path.write_text(json.dumps(record(scores(), metric=METRIC, batch_size=8)))
    runs = tmp_path / "runs"
    assert main(["compare", str(path), "builtin:tiny-llama", "--suite", str(suite), "--runs-dir", str(runs)]) == 2
    assert "batch_size 8 vs 64" in capsys.readouterr().err
    assert not (runs / "evals").exists()  # nothing was evaluated


def test_the_suite_gate_is_the_default_of_compare(env, tmp_path, write_suite):
    """suites/medical.yaml names gates/medical.yaml (general tasks: margin 5): a 3-point loss on
    addition passes it where the default gate (2 points) fails it."""
    base, cand = record(scores(n=400), metric=METRIC), record(scores(n=400, addition=0.93), metric=METRIC)
    with_gate = write_suite(suite_dict(), "with_gate.yaml")
    for name, rec in (("b", base), ("c", cand)):
        (tmp_path / f"{name}.json").write_text(json.dumps(rec))
    common = [str(tmp_path / "b.json"), str(tmp_path / "c.json"), "--out", str(tmp_path / "o")]
    assert main(["compare", *common, "--suite", str(with_gate)]) == 0
    result = json.loads((tmp_path / "o" / "compare.json").read_text())
    assert {r["margin"] for r in result["rules"] if r["task"] != "fb_medical"} == {5}
    compare, _, _ = env
    assert compare(base, cand)[0] == 1


def test_a_sweep_with_a_bad_gate_file_stops_before_anything_runs(tmp_path, write_suite, capsys):
    gate = tmp_path / "gate.yaml"
    gate.write_text(yaml.safe_dump({"rules": [{"category": "poetry"}]}))
    suite = write_suite({**suite_dict(), "gate": str(gate)})
    assert main(["sweep", str(suite), "--runs-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{gate}: rules[0]: category 'poetry' matches no task" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_a_task_name_with_dollar_signs_is_drawn_as_written(tmp_path, write_suite):
    name = "$x^$"  # mathtext would parse it, and fail
    raw = suite_dict()
    raw["tasks"]["general"] = [{"name": name, "category": "qa", "metric": "acc"}]
    suite = write_suite(raw)
    metric = {"fb_medical": "acc", name: "acc"}
    for side, general in (("base", [1.0] * 30), ("cand", [1.0] * 20 + [0.0] * 10)):
        (tmp_path / f"{side}.json").write_text(json.dumps(record({"fb_medical": [0.0] * 30, name: general},
                                                                 metric=metric)))
    out = tmp_path / "out"
    assert main(["compare", str(tmp_path / "base.json"), str(tmp_path / "cand.json"), "--suite", str(suite),
                 "--out", str(out)]) == 1
    page = (out / "compare.html").read_text()
    assert "<img " in page and "could not be drawn" not in page


def test_a_figure_that_cannot_be_drawn_leaves_the_verdict_and_the_tables(env, monkeypatch):
    from forgetbench.report import compare_page

    def broken(result):
        raise RuntimeError("a bug in a figure")

    monkeypatch.setattr(compare_page, "forest_plot", broken)
    compare, tmp_path, _ = env
    rec = record(scores(), metric=METRIC)
    code, result = compare(rec, rec)
    assert code == 0 and result["verdict"] == "PASS"
    page = (tmp_path / "out" / "compare.html").read_text()
    assert "could not be drawn</b>: RuntimeError: a bug in a figure" in page and "<td>fb_capitals</td>" in page
    assert "PASS" in (tmp_path / "out" / "compare.md").read_text()


def test_an_unusable_out_is_refused_before_anything_is_evaluated(tmp_path, write_suite, capsys):
    suite, runs = write_suite(suite_dict()), tmp_path / "runs"
    (tmp_path / "a-file").write_text("")
    out = tmp_path / "a-file" / "out"  # under a regular file: refused to root as well
    assert main(["compare", "builtin:tiny-llama", "builtin:tiny-llama", "--suite", str(suite), "--out", str(out),
                 "--runs-dir", str(runs)]) == 2
    err = capsys.readouterr().err
    assert err == f"forgetbench: error: --out {out}: {tmp_path / 'a-file'} is not a folder; give a folder (or a path " \
                  "to one to create)\n"
    assert not runs.exists()  # nothing evaluated


def test_outputs_that_cannot_be_written_exit_2_with_the_verdict_printed(env, capsys):
    _, tmp_path, suite = env
    out = tmp_path / "out"
    (out / "compare.json").mkdir(parents=True)  # the folder is usable, that file is not
    (tmp_path / "base.json").write_text(json.dumps(record(scores(), metric=METRIC)))
    assert main(["compare", str(tmp_path / "base.json"), str(tmp_path / "base.json"), "--suite", str(suite),
                 "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert "verdict: PASS" in captured.out
    assert captured.err == (f"forgetbench: error: --out {out}: cannot write {out / 'compare.json'} (Is a directory); "
                            "the verdict above (PASS) stands, its files are not written: run it again with a --out "
                            "you can write to (the evaluations are stored, not repeated)\n")


def test_two_candidates_under_one_long_path_get_folders_of_their_own(tmp_path, write_suite):
    """The default output folder: RUNS/compare/BASE-vs-CANDIDATE-HASH, a hash of both in full."""
    from forgetbench import compare

    raw = suite_dict()
    raw.pop("gate")
    suite, runs = write_suite(raw), tmp_path / "runs"
    long = tmp_path / ("experiments-" * 8) / "run-7"
    paths = {}
    for name, rec in (("base", record(scores(), metric=METRIC)), ("checkpoint-1000", record(scores(), metric=METRIC)),
                      ("checkpoint-2000", record(scores(addition=0.5), metric=METRIC))):
        paths[name] = long / name / "scores.json"
        paths[name].parent.mkdir(parents=True)
        paths[name].write_text(json.dumps(rec))
    for cand, code in (("checkpoint-1000", 0), ("checkpoint-2000", 1)):
        assert main(["compare", str(paths["base"]), str(paths[cand]), "--suite", str(suite),
                     "--runs-dir", str(runs)]) == code
    folders = sorted((runs / "compare").iterdir())
    assert [json.loads((f / "compare.json").read_text())["verdict"] for f in folders] == ["PASS", "FAIL"]
    assert all(f"{cand}-scores-" in f.name for f, cand in zip(folders, ("checkpoint-1000", "checkpoint-2000")))
    # models named by such paths too (a folder or a hub id: named, not looked at)
    base = compare.resolve_side("meta-llama/Llama-3.1-8B")
    names = {compare.output_name(base, compare.resolve_side(f"{long}/checkpoint-{n}")) for n in (1000, 2000)}
    assert len(names) == 2 and all(len(n) < 160 for n in names)
