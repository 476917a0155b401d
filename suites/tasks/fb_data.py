"""lm-eval's ``custom_dataset`` for the bundled tasks: their JSONL files, named relative to this
folder, loaded from any working directory. Plain ``dataset_kwargs.data_files`` are resolved by
``datasets`` against the working directory, so the same YAMLs would work under the
``lm_eval`` CLI from one folder only; with this loader they work as they are under the CLI
(``lm_eval --include_path suites/tasks ...``) and under forgetbench alike."""
from pathlib import Path

import datasets

_HERE = Path(__file__).resolve().parent


def _here(path: str) -> str:
    return str(path if Path(path).is_absolute() else (_HERE / path).resolve())


def load_relative(data_files=None, **_metadata):
    """``datasets.load_dataset("json", data_files=...)`` with relative paths taken from this
    folder. lm-eval also passes the task's metadata (and, from its CLI, the model arguments):
    they are not used."""
    if isinstance(data_files, str):
        files = _here(data_files)
    elif isinstance(data_files, list):
        files = [_here(p) for p in data_files]
    else:
        files = {split: _here(p) if isinstance(p, str) else [_here(q) for q in p] for split, p in data_files.items()}
    return datasets.load_dataset("json", data_files=files)
