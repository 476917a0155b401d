"""The suite's training data: rows of {"prompt", "completion"} (the loss covers the
completion only, as in SFT) or {"text"} (every token, as for pretraining-like replay data),
from JSONL files (read here, line by line, so that every mistake names the file and line)
or from datasets (``datasets.load_dataset`` / ``load_from_disk``: a hub id, a parquet or
CSV file, a saved folder; each row mapped by field names or Jinja templates, a mistake
named by its row). Training (train/data.py), the leakage guard and the point ids read them
here; no torch.
"""
from __future__ import annotations

import contextlib
import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from forgetbench.errors import ForgetbenchError, causes, shown, unreachable
from forgetbench.store import file_digest, json_digest

# local files the `datasets` library reads by their suffix (a path to one is a DatasetSource)
DATASET_BUILDERS = {".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}
DATA_SUFFIXES = (*DATASET_BUILDERS, ".json", ".jsonl", ".txt")  # what makes a folder a dataset


class DatasetSource(BaseModel):
    """Rows read through the ``datasets`` library: a hub id, a local file (parquet, JSON or
    JSON Lines, CSV, Arrow) or a local folder (written by ``save_to_disk``, or data files).
    Each row becomes a prompt/completion pair or a text through ``prompt``/``completion`` or
    ``text``: a field name, or a Jinja template over the row's fields as lm-eval's
    ``doc_to_text`` is ("Question: {{question}}\nAnswer:"). None set: the fields named
    prompt and completion, else text."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: Annotated[str, Field(min_length=1)]  # hub id, or a path relative to the suite file
    name: str | None = None      # the dataset's configuration (load_dataset's ``name``)
    split: str | None = None     # default: train (a folder saved from one split has none)
    revision: str | None = None  # a hub dataset's branch, tag or commit
    prompt: str | None = None
    completion: str | None = None
    text: str | None = None

    @model_validator(mode="after")
    def _one_mapping(self) -> DatasetSource:
        if (self.prompt is None) != (self.completion is None):
            raise ValueError("set prompt and completion together (a field name or a Jinja template each)")
        if self.text is not None and self.prompt is not None:
            raise ValueError("set prompt and completion, or text, not both")
        return self

    def is_local(self) -> bool:
        """A path (made absolute when the suite loads), not a hub id."""
        return Path(self.dataset).is_absolute()

    def __str__(self) -> str:  # as messages name it
        extra = [f"name {self.name}"] * bool(self.name) + [f"split {self.split}"] * bool(self.split)
        return f"dataset {self.dataset}" + (f" ({', '.join(extra)})" if extra else "")


Source = Path | DatasetSource


def read_rows(source: Source) -> list[dict]:
    """Rows of a data source, each a prompt/completion pair or a text."""
    return [row for _, row in numbered_rows(source)]


def where(source: Source, number: int) -> str:
    """How messages name one row: ``file:line`` of a JSONL file, ``dataset … row i`` of a dataset."""
    return f"{source}:{number}" if isinstance(source, Path) else f"{source} row {number}"


def numbered_rows(source: Source) -> list[tuple[int, dict]]:
    """(file line, row) of each row of a JSONL data file (blank lines are skipped), or
    (row index, row) of a dataset's split."""
    if isinstance(source, DatasetSource):
        return _dataset_rows(source)
    path = source
    rows = []
    with open(path, "rb") as fh:  # bytes, decoded line by line: a bad byte is named with its line
        for lineno, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ForgetbenchError(f"{path}:{lineno}: not UTF-8 text (byte 0x{raw[exc.start]:02x} "
                                       f"at offset {exc.start} of the line); save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ForgetbenchError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            ok = isinstance(row, dict) and (
                isinstance(row.get("text"), str)
                or (isinstance(row.get("prompt"), str) and isinstance(row.get("completion"), str)))
            if not ok:
                raise ForgetbenchError(f"{path}:{lineno}: each row needs string fields "
                                       '"prompt" and "completion", or "text"')
            rows.append((lineno, row))
    if not rows:
        raise ForgetbenchError(f"{path}: no rows")
    return rows


# ---------------------------------------------------------------- datasets

def source_fingerprint(source: Source | None) -> Any:
    """What identifies a data source without loading it, hashed into point ids: a file's
    content hash; a local dataset's files' content hashes; a hub dataset's id with the commit
    the local Hugging Face cache holds (a new revision is new data). With the row mapping."""
    if source is None or isinstance(source, Path):
        return file_digest(source)
    path = Path(source.dataset)
    if source.is_local():
        files = [path] if path.is_file() else sorted(f for f in path.rglob("*") if f.is_file())
        where_from: dict[str, Any] = {"files": json_digest(
            [[str(f.relative_to(path.parent)), file_digest(f)] for f in files])[:16]}
    else:
        where_from = {"hub": source.dataset, "commit": _hub_commit(source.dataset, source.revision)}
    return {**where_from, **source.model_dump(exclude={"dataset"})}


def uncached_hub_data(sources) -> list[DatasetSource]:
    """The hub datasets among ``sources`` that the local Hugging Face cache does not hold."""
    return [s for s in sources if isinstance(s, DatasetSource) and not s.is_local()
            and _hub_commit(s.dataset, s.revision) is None]


def _hub_commit(repo: str, revision: str | None) -> str | None:
    """The commit of a hub dataset's ``revision`` (default: main) in the local Hugging Face
    cache, read from its refs without network; None when it is not cached."""
    from huggingface_hub import constants

    ref = Path(constants.HF_HUB_CACHE) / f"datasets--{repo.replace('/', '--')}" / "refs" / (revision or "main")
    if ref.is_file():
        return ref.read_text().strip()
    return revision if revision and len(revision) == 40 else None


@contextlib.contextmanager
def _quiet_datasets():
    """``datasets`` without its progress bars and logs (a sweep reads its data often; a file
    it cannot read is a ForgetbenchError, not a logged line before it)."""
    import datasets

    was_enabled = datasets.utils.logging.is_progress_bar_enabled()
    level = datasets.utils.logging.get_verbosity()
    datasets.utils.logging.disable_progress_bar()
    datasets.utils.logging.set_verbosity(datasets.utils.logging.CRITICAL)
    try:
        yield datasets
    finally:
        datasets.utils.logging.set_verbosity(level)
        if was_enabled:
            datasets.utils.logging.enable_progress_bar()


def load_split(source: DatasetSource):
    """The ``datasets.Dataset`` a source names. Local folders written by ``save_to_disk`` are
    read with ``load_from_disk``; anything else with ``load_dataset`` (which caches it)."""
    path = Path(source.dataset)
    split = source.split or "train"
    if path.is_file() and path.stat().st_size == 0:
        raise ForgetbenchError(f"{source}: the file is empty; give it rows, or set the field to another file")
    with _quiet_datasets() as datasets:
        try:
            if path.is_dir() and ((path / "state.json").exists() or (path / "dataset_dict.json").exists()):
                loaded = datasets.load_from_disk(str(path))
                if isinstance(loaded, datasets.DatasetDict):
                    # a slice, as load_dataset reads them: train[:-1000], train[100:200]
                    name, lo, hi = re.fullmatch(r"(.+?)(?:\[(-?\d*):(-?\d*)\])?", split).groups()
                    if name not in loaded:
                        raise ForgetbenchError(f"{source}: no split {name!r}; its splits: "
                                               f"{', '.join(loaded)} (set split)")
                    part = loaded[name]
                    if lo or hi:
                        part = part.select(range(len(part))[slice(int(lo) if lo else None, int(hi) if hi else None)])
                    return part
                if source.split is not None:
                    raise ForgetbenchError(f"{source}: a single split saved with save_to_disk has no "
                                           "splits to choose from; remove split")
                return loaded
            if path.is_file():  # one file is split train (a slice of it: split train[:-1000])
                builder = DATASET_BUILDERS.get(path.suffix, "json")
                # datasets knows a local file by its path and mtime: a cache folder of its own
                # per content, so a file rewritten with its old mtime is not read stale
                cache = Path(datasets.config.HF_DATASETS_CACHE) / "forgetbench" / file_digest(path)
                return datasets.load_dataset(builder, data_files={"train": str(path)}, split=split,
                                             cache_dir=str(cache))
            return datasets.load_dataset(source.dataset, name=source.name, split=split,
                                         revision=source.revision)
        except ForgetbenchError:
            raise
        except datasets.exceptions.DatasetGenerationError as exc:  # what it could not read is its cause
            raise ForgetbenchError(f"{source}: {_unreadable(exc, path)}") from None
        except StopIteration:  # its JSON reader, on a file of no rows in a folder
            raise ForgetbenchError(f"{source}: a file with no rows in it; remove it, or give it rows") from None
        except (OSError, ValueError, ImportError) as exc:  # offline, gated, misspelt, a bad split: its first line
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            args = ", ".join([repr(source.dataset)] + [f"{k}={v!r}" for k, v in (
                ("name", source.name), ("split", split), ("revision", source.revision)) if v is not None])
            fix = "" if source.is_local() or not unreachable(exc) else (
                "; with no network here, cache it where the hub is reachable (forgetbench cache SUITE, or "
                f"python -c \"import datasets; datasets.load_dataset({args})\") and copy the Hugging Face "
                "cache (~/.cache/huggingface)")
            raise ForgetbenchError(f"{source}: cannot load it ({type(exc).__name__}: {first}){fix}") from None


def _unreadable(exc: BaseException, path: Path) -> str:
    """What of a local dataset ``datasets`` could not read (from the error its reader raised,
    which a DatasetGenerationError wraps), and the fix."""
    chain = causes(exc)
    bad = next((e for e in chain if isinstance(e, UnicodeDecodeError)), None)
    if bad is not None:
        return f"not UTF-8 text (byte 0x{bad.object[bad.start]:02x}); save it as UTF-8"
    cast = next((e for e in chain if hasattr(e, "table_column_names")), None)  # datasets.table.CastError
    if cast is not None and path.is_dir():
        first, other = cast.requested_column_names, cast.table_column_names
        odd = [c for c in other if c not in first] + [c for c in first if c not in other]
        return (f"its files do not all have the same columns (the first has {', '.join(first)}; another differs "
                f"in {', '.join(odd)}), and a folder is read as one table; give one file, a folder of files with "
                "the same columns, or a folder written by save_to_disk")
    first = (str(chain[-1]).strip().splitlines() or [""])[0][:300]
    kind = "folder of data files" if path.is_dir() else f"{path.suffix[1:] or 'data'} file"
    return (f"`datasets` cannot read it ({type(chain[-1]).__name__}: {first}); check that it is a "
            f"well-formed {kind} with at least one row")


def _dataset_rows(source: DatasetSource) -> list[tuple[int, dict]]:
    return list(_dataset_rows_cached(source, source_fingerprint(source).__repr__()))


@lru_cache(maxsize=8)
def _dataset_rows_cached(source: DatasetSource, _fingerprint: str) -> tuple[tuple[int, dict], ...]:
    """(row index, mapped row) of a dataset, read once per process while it is unchanged."""
    before = None if source.is_local() else _hub_commit(source.dataset, source.revision)
    split = load_split(source)
    after = None if source.is_local() else _hub_commit(source.dataset, source.revision)
    if before is not None and after != before:  # read: the new commit; hashed into the point: the old one
        raise ForgetbenchError(f"{source}: a new revision was downloaded while it was read ({before[:12]} -> "
                               f"{(after or '?')[:12]}); run the command again, or pin data.*.revision")
    columns = list(split.column_names)
    if source.text is not None:
        mapping = {"text": source.text}
    elif source.prompt is not None:
        mapping = {"prompt": source.prompt, "completion": source.completion}
    elif "prompt" in columns and "completion" in columns:
        mapping = {"prompt": "prompt", "completion": "completion"}
    elif "text" in columns:
        mapping = {"text": "text"}
    else:
        raise ForgetbenchError(f"{source}: its columns are {', '.join(columns)}; say which make each row: "
                               "prompt and completion (field names or Jinja templates), or text")
    render = {key: _renderer(source, key, value, columns) for key, value in mapping.items()}
    docs = split.to_list()
    completion = mapping.get("completion")
    if completion is not None and not _is_template(completion) and _null_columns(completion, columns, docs):
        raise ForgetbenchError(f"{source}: completion: column {shown(completion)} is null in every row, so every "
                               "completion would be empty; map completion to the column that holds the answers")
    rows = []
    for i, doc in enumerate(docs):
        row = {key: fn(i, doc) for key, fn in render.items()}
        if "text" in row and not row["text"].strip():
            continue  # an empty text row (wikitext has many) would teach nothing but EOS
        rows.append((i, row))
    if not rows:
        raise ForgetbenchError(f"{source}: no rows")
    if completion is not None and not any(row["completion"].strip() for _, row in rows):
        null = _null_columns(completion, columns, docs)
        why = f" (column {shown(null[0])} is null in every row)" if null else ""
        raise ForgetbenchError(f"{source}: completion: {shown(completion)} makes an empty completion of every "
                               f"row{why}, so training would learn nothing but the end of text; map completion to "
                               "the column that holds the answers")
    return tuple(rows)


def _is_template(value: str) -> bool:
    """A mapped field is a Jinja template, else a column's name."""
    return "{{" in value or "{%" in value


def _null_columns(value: str, columns: list[str], docs: list[dict]) -> list[str]:
    """The columns a mapped field reads (its column, or the names its template reads) that are
    null in every row."""
    if _is_template(value):
        import jinja2.meta

        read = jinja2.meta.find_undeclared_variables(_jinja().parse(value))
    else:
        read = {value}
    return [c for c in columns if c in read and docs and all(doc[c] is None for doc in docs)]


def _renderer(source: DatasetSource, key: str, value: str, columns: list[str]):
    """Row index, document -> the text of one mapped field: a column's value, or a Jinja
    template rendered on the document (an unknown name in it is an error, not an empty string)."""
    if not _is_template(value):
        if value not in columns:
            raise ForgetbenchError(f"{source}: {key}: no column {shown(value)}; its columns: {', '.join(columns)} "
                                   "(or write a Jinja template, e.g. \"Q: {{question}}\")")

        def field(i: int, doc: dict) -> str:
            got = doc[value]
            if isinstance(got, (int, float)) and not isinstance(got, bool):
                return str(got)
            if not isinstance(got, str):
                raise ForgetbenchError(f"{where(source, i)}: {key}: column {shown(value)} holds "
                                       f"{type(got).__name__}, not text; write a Jinja template that makes text of it")
            return got
        return field
    import jinja2

    try:
        template = _jinja().from_string(value)
    except jinja2.TemplateSyntaxError as exc:
        raise ForgetbenchError(f"{source}: {key}: not a valid Jinja template ({exc.message}): {shown(value)}") from None

    def rendered(i: int, doc: dict) -> str:
        try:
            return template.render(**doc)
        except jinja2.UndefinedError as exc:
            raise ForgetbenchError(f"{where(source, i)}: {key}: {exc.message} in the template {shown(value)}; "
                                   f"its columns: {', '.join(columns)}") from None
        except Exception as exc:  # the template's own code failed on this row: the sandbox, 1/0, "a" + 1 ...
            reason = (str(exc).strip().splitlines() or [""])[0][:200]
            raise ForgetbenchError(f"{where(source, i)}: {key}: the template {shown(value)} fails on this row "
                                   f"({type(exc).__name__}: {reason}); fix the template") from None
    return rendered


@lru_cache(maxsize=1)
def _jinja():
    import jinja2

    # sandboxed: a suite's template reads a row, nothing else
    from jinja2.sandbox import SandboxedEnvironment

    # a null cell (MedMCQA's missing explanations) renders as nothing, not as the text "None"
    return SandboxedEnvironment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                                finalize=lambda value: "" if value is None else value)

