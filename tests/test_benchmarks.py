"""Every script under benchmarks/ runs, at its smallest settings: a benchmark is run by hand,
rarely, and breaks unseen when the code it drives changes (train_throughput.py did). A new
script gets its smoke run here, or the first test fails.

The Python scripts run in this process, as ``python benchmarks/SCRIPT ARGS`` runs them
(their imports are this process's already); those that start processes still start them."""
import re
import runpy
import subprocess
import sys

import pytest

from forgetbench import regularizers
from tests.conftest import REPO

BENCHMARKS = REPO / "benchmarks"

# script -> (its smallest settings, a line its report prints, slow: over ~10 s)
SMOKE = {
    "train_throughput.py": (["--hidden", "32", "--layers", "1", "--seq-len", "32", "--batch-size", "4",
                             "--epochs", "0.1"], "ratio forgetbench / Trainer: ", True),
    "memory_plan.py": (["--hidden", "32", "--layers", "1", "--vocab", "640", "--seq-len", "32", "--batch-size", "2",
                        "--steps", "1", "--dtype", "float32", "--regularizer", "ewc", "--fisher-samples", "2"],
                       "measured peak of live tensors: ", False),
    "eval_overhead.py": (["--repeats", "1", "--epochs", "0.1"], "overhead (with − without) / without: ", True),
    "eval_speed.py": (["--repeats", "1", "--set", "eval.limit=2"], "scores equal in all three: yes", True),
    "regularizer_drift.py": (["--smoke"], "after the last step (lr ", True),
    "sweep_jobs.py": (["--jobs", "1", "2", "--set", "sweep={lr: [1.0e-3], epochs: [0.1]}", "--set", "eval.limit=2"],
                      "results.csv --jobs 2 vs --jobs 1: ", True),
}


def test_every_benchmark_script_has_a_smoke_run():
    assert {p.name for p in BENCHMARKS.glob("*.py") if not p.name.startswith("_")} == set(SMOKE)


@pytest.mark.parametrize("script", [pytest.param(name, marks=[pytest.mark.slow] * SMOKE[name][2])
                                    for name in SMOKE])
def test_a_benchmark_runs_at_its_smallest_settings(script, tmp_path, monkeypatch, capsys):
    args, expected, _ = SMOKE[script]
    monkeypatch.chdir(tmp_path)  # (nothing may depend on being started from the repository)
    monkeypatch.setattr(sys, "argv", [str(BENCHMARKS / script), *args])
    monkeypatch.setattr(sys, "path", list(sys.path))  # (each script puts its folders first)
    # a script may register regularisers of its own (regularizer_drift.py's probes): the
    # tests after it train with the built-in ones
    monkeypatch.setattr(regularizers, "_REGISTRY", dict(regularizers._REGISTRY))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    try:
        runpy.run_path(str(BENCHMARKS / script), run_name="__main__")
    except SystemExit as ended:  # sys.exit(main())
        assert ended.code in (0, None), capsys.readouterr().out[-3000:]
    assert expected in capsys.readouterr().out


def test_the_gpu_check_parses_and_passes_each_script_only_flags_it_has():
    """benchmarks/gpu_check.sh needs GPUs (its SMALL=1 mode, bf16 on a CPU, takes minutes): it
    is checked, not run."""
    script = BENCHMARKS / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text().replace("\\\n", " ")
    model_flags = set(re.findall(r"--[a-z-]+", " ".join(re.findall(r"model=\((.*?)\)", text))))
    calls = [(name, line) for line in text.splitlines() for name in re.findall(r"benchmarks/(\w+\.py)", line)
             if not line.lstrip().startswith("#")]
    assert {name for name, _ in calls} == {"train_throughput.py", "memory_plan.py"}
    for name, line in calls:
        defined = set(re.findall(r'add_argument\("(--[a-z-]+)"', (BENCHMARKS / name).read_text()))
        passed = set(re.findall(r"(?<![\w-])--[a-z-]+", line.split(name, 1)[1]))
        passed |= model_flags if "${model[@]}" in line else set()
        assert passed <= defined, f"gpu_check.sh passes {name} {sorted(passed - defined)}, which it does not define"
