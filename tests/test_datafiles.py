import pytest

from forgetbench import datafiles
from forgetbench.errors import ForgetbenchError


def test_bad_rows_name_file_and_line(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"prompt": "a", "completion": "b"}\nnot json\n')
    with pytest.raises(ForgetbenchError, match=r"d.jsonl:2: not valid JSON"):
        datafiles.read_rows(p)
    p.write_text('{"prompt": "a"}\n')
    with pytest.raises(ForgetbenchError, match=r"d.jsonl:1: each row needs"):
        datafiles.read_rows(p)


def test_a_byte_that_is_not_utf8_names_file_and_line(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_bytes(b'{"prompt": "a", "completion": "b"}\n\n{"prompt": "caf\xe9", "completion": "b"}\n')
    with pytest.raises(ForgetbenchError, match=rf"^{p}:3: not UTF-8 text \(byte 0xe9 at offset 15 of the line\)"):
        datafiles.read_rows(p)
    # the leakage guard's lines are read_rows' lines, blank ones counted
    p.write_bytes(b'{"text": "a"}\n\n{"text": "b"}\n')
    assert datafiles.numbered_rows(p) == [(1, {"text": "a"}), (3, {"text": "b"})]


def _table(tmp_path, name: str, **columns):
    import pandas as pd

    path = tmp_path / name
    frame = pd.DataFrame(columns)
    frame.to_parquet(path) if path.suffix == ".parquet" else frame.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("name, content, message", [
    ("empty.csv", b"", "the file is empty; give it rows, or set the field to another file"),
    ("empty.json", b"", "the file is empty; give it rows, or set the field to another file"),
    ("empty.parquet", b"", "the file is empty; give it rows, or set the field to another file"),
    ("latin1.csv", "prompt,completion\ncaf\xe9,x\n".encode("latin-1"), "not UTF-8 text (byte 0xe9); save it as UTF-8"),
    ("rowless.parquet", None, "`datasets` cannot read it (ArrowInvalid: BatchSize must be greater than 0, got 0); "
     "check that it is a well-formed parquet file with at least one row"),
])
def test_a_file_datasets_cannot_read_is_one_line_naming_it_and_the_fix(tmp_path, name, content, message):
    path = tmp_path / name
    if content is None:
        _table(tmp_path, name, prompt=[], completion=[])
    else:
        path.write_bytes(content)
    with pytest.raises(ForgetbenchError) as info:
        datafiles.read_rows(datafiles.DatasetSource(dataset=str(path)))
    assert str(info.value) == f"dataset {path}: {message}"


def test_a_folder_of_jsonl_files_that_do_not_share_columns_is_one_line(tmp_path, write_suite, capsys):
    from forgetbench.cli import main
    from tests.conftest import suite_dict

    folder = tmp_path / "target"
    folder.mkdir()
    (folder / "a.jsonl").write_text('{"prompt": "a", "completion": "b"}\n')
    (folder / "b.jsonl").write_text('{"text": "c"}\n')
    path = write_suite(suite_dict(**{"data.target": str(folder)}))
    assert main(["sweep", str(path), "--runs-dir", str(tmp_path / "runs"), "--dry-run"]) == 2
    assert capsys.readouterr().err == (
        f"forgetbench: error: dataset {folder}: its files do not all have the same columns (the first has prompt, "
        "completion; another differs in text), and a folder is read as one table; give one file, a folder of files "
        "with the same columns, or a folder written by save_to_disk\n")
    assert not (tmp_path / "runs").exists()


def test_a_completion_that_is_empty_in_every_row_is_refused_naming_the_column(tmp_path):
    path = _table(tmp_path, "d.parquet", question=["q1", "q2"], answer=[None, None], note=["n1", None])

    def rows(**mapping):
        return datafiles.read_rows(datafiles.DatasetSource(dataset=str(path), **mapping))

    fix = "map completion to the column that holds the answers"
    with pytest.raises(ForgetbenchError, match=rf"^dataset {path}: completion: column 'answer' is null in every "
                                               rf"row, so every completion would be empty; {fix}$"):
        rows(prompt="question", completion="answer")
    with pytest.raises(ForgetbenchError, match=rf"^dataset {path}: completion: ' {{{{ answer }}}}' makes an empty "
                                               r"completion of every row \(column 'answer' is null in every row\)"):
        rows(prompt="question", completion=" {{ answer }}")
    with pytest.raises(ForgetbenchError, match=rf"completion: '{{{{ question\[:0\] }}}}' makes an empty completion "
                                               rf"of every row, so training would learn nothing .*; {fix}$"):
        rows(prompt="question", completion="{{ question[:0] }}")
    # a column null in every row beside one that is not: each completion has text
    assert rows(prompt="question", completion="{{ note }}{{ answer }}") == [
        {"prompt": "q1", "completion": "n1"}, {"prompt": "q2", "completion": ""}]


@pytest.mark.parametrize("template, error", [
    ("{{ 1 / 0 }}", "ZeroDivisionError: division by zero"),
    ("{{ question + 1 }}", 'TypeError: can only concatenate str (not "int") to str'),
    ("{{ question.__class__.__mro__ }}", "SecurityError: access to attribute '__class__' of 'str' object is unsafe."),
])
def test_a_template_that_fails_on_a_row_is_one_line_naming_the_row_and_the_error(tmp_path, template, error):
    path = _table(tmp_path, "d.csv", question=["q1", "q2"], answer=["a1", "a2"])
    with pytest.raises(ForgetbenchError) as info:
        datafiles.read_rows(datafiles.DatasetSource(dataset=str(path), prompt="{{ question }}", completion=template))
    assert str(info.value) == (f"dataset {path} row 0: completion: the template {template!r} fails on this row "
                               f"({error}); fix the template")
