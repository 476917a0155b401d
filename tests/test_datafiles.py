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
