"""The release gate's rules are checked against the suite before anything is evaluated or
written: a rule's task selector and its metric. How the gate judges is tested through compare
(test_compare.py) and the sweep's verdict (report/test_verdict.py)."""
import pytest
import yaml

from forgetbench.cli import main
from forgetbench.config import load_suite
from forgetbench.errors import ForgetbenchError
from forgetbench.eval.harness import declared_metrics
from forgetbench.gate import suite_gate
from tests.conftest import suite_dict


def _suite_with_gate(tmp_path, write_suite, rule: dict):
    gate = tmp_path / "gate.yaml"
    gate.write_text(yaml.safe_dump({"rules": [rule]}))
    return write_suite({**suite_dict(), "gate": str(gate)}), gate


def test_a_rule_on_a_metric_the_task_does_not_report_stops_the_sweep_before_anything_is_written(
        tmp_path, write_suite, capsys):
    path, gate = _suite_with_gate(tmp_path, write_suite, {"task": "fb_capitals", "metric": "acc_nrom"})
    assert main(["sweep", str(path), "--runs-dir", str(tmp_path / "runs"), "--dry-run"]) == 2
    assert capsys.readouterr().err == (f"forgetbench: error: {gate}: rules[0].metric: task fb_capitals reports no "
                                       "metric 'acc_nrom'; it reports acc, acc_norm\n")
    assert not (tmp_path / "runs").exists()


def test_a_sweep_refuses_a_rule_on_a_metric_other_than_the_headline_and_compare_takes_it(tmp_path, write_suite):
    """The sweep's verdict has each task's headline metric alone; compare has every metric."""
    path, gate = _suite_with_gate(tmp_path, write_suite, {"task": "fb_capitals", "metric": "acc_norm"})
    suite = load_suite(path)
    with pytest.raises(ForgetbenchError, match=(
            rf"^{gate}: rules\[0\].metric: the sweep's verdict tests task fb_capitals by its headline metric acc "
            r"\(tasks.general\[0\].metric\) alone, not 'acc_norm'; drop metric from the rule, or make 'acc_norm' "
            r"the headline$")):
        suite_gate(suite, declared_metrics, headline_only=True)
    assert suite_gate(suite, declared_metrics)[1] == str(gate)


def test_compare_refuses_a_rule_on_a_metric_the_task_does_not_report_before_evaluating(
        tmp_path, write_suite, capsys):
    path, _ = _suite_with_gate(tmp_path, write_suite, {"role": "general", "test": "non_inferior"})
    gate = tmp_path / "other_gate.yaml"
    gate.write_text(yaml.safe_dump({"rules": [{"category": "math", "metric": "exact_match,strict-match"}]}))
    runs, out = tmp_path / "runs", tmp_path / "out"
    assert main(["compare", "builtin:tiny-llama", "builtin:tiny-llama", "--suite", str(path), "--gate", str(gate),
                 "--runs-dir", str(runs), "--out", str(out)]) == 2
    assert capsys.readouterr().err == (f"forgetbench: error: {gate}: rules[0].metric: task fb_addition reports no "
                                       "metric 'exact_match,strict-match'; it reports exact_match\n")
    assert not runs.exists() and not out.exists()
