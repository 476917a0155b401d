import json
from pathlib import Path

import pytest

from forgetbench.store import RunStore, atomic_write_json, fresh_dir


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    atomic_write_json(tmp_path / "a" / "x.json", {"v": 1})
    atomic_write_json(tmp_path / "a" / "x.json", {"v": 2})
    assert json.loads((tmp_path / "a" / "x.json").read_text()) == {"v": 2}
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["x.json"]


def test_fresh_dir_replaces_only_on_success(tmp_path):
    final = tmp_path / "model"
    with fresh_dir(final) as tmp:
        (tmp / "w").write_text("1")
    try:
        with fresh_dir(final) as tmp:
            (tmp / "w").write_text("2")
            raise RuntimeError("crash mid-export")
    except RuntimeError:
        pass
    assert (final / "w").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_journal_replays_to_state_and_skips_a_torn_line(tmp_path):
    store = RunStore(tmp_path)
    store.append("point_started", point="p1")
    store.append("point_trained", point="p1", summary={"steps": 3})
    store.append("point_evaluated", point="p1", eval_key="k1")
    store.append("point_started", point="p2")
    store.append("point_failed", point="p2", error="boom")
    store.append("point_started", point="p3")
    with open(store.journal, "a") as fh:
        fh.write('{"event": "point_trained", "point": "p3", "summ')  # crash mid-append
    states = store.states()
    assert states["p1"].status == "evaluated" and states["p1"].eval_keys == {"k1"}
    assert states["p1"].train == {"steps": 3}
    assert states["p2"].status == "failed" and states["p2"].error == "boom"
    assert states["p3"].status == "running"
    store.append("point_trained", point="p3", summary={})  # appending after a torn line works
    assert store.states()["p3"].status == "trained"


def test_a_corrupt_stored_result_is_named_and_set_aside_for_recomputing(tmp_path):
    from forgetbench.errors import ForgetbenchError
    from forgetbench.store import read_result, reuse_result

    path = tmp_path / "scores" / "k.json"
    record = {"settings": {}, "tasks": {"fb_med": {"metrics": {}}}}
    atomic_write_json(path, record)
    warnings = []
    assert reuse_result(path, warnings.append) == record and not warnings
    path.write_text('{"tasks": {"fb_med')  # truncated
    with pytest.raises(ForgetbenchError, match=rf"^{path}: stored result is corrupt .*`forgetbench sweep`"):
        read_result(path)
    assert reuse_result(path, warnings.append) is None
    [aside] = path.parent.glob("k.json.corrupt-*")
    assert aside.read_text() == '{"tasks": {"fb_med' and not path.exists()
    assert len(warnings) == 1 and str(path) in warnings[0] and aside.name in warnings[0]
    assert reuse_result(path, warnings.append) is None and len(warnings) == 1  # missing: no warning


@pytest.mark.parametrize("record, why", [
    ([{"settings": {}, "tasks": {}}], "a JSON array, not an object"),
    ({"settings": [], "tasks": {}}, "its settings is a JSON array, not an object"),
    ({"settings": {}}, "its tasks is missing"),
    ({"settings": {}, "tasks": {"fb_med": [0.5]}}, "its task 'fb_med' has no object of metrics"),
])
def test_a_stored_result_of_another_shape_is_as_corrupt_as_a_truncated_one(tmp_path, record, why):
    from forgetbench.errors import ForgetbenchError
    from forgetbench.store import read_result, reuse_result

    path = tmp_path / "k.json"
    atomic_write_json(path, record)
    with pytest.raises(ForgetbenchError, match=rf"^{path}: stored result is corrupt \({why}\); run `forgetbench"):
        read_result(path)
    warnings = []
    assert reuse_result(path, warnings.append) is None and len(warnings) == 1 and not path.exists()
    assert json.loads(next(tmp_path.glob("k.json.corrupt-*")).read_text()) == record


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_an_exported_model_honours_the_umask_like_every_other_file(tiny_model_dir, tmp_path, umask):
    import os
    import stat

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    old = os.umask(umask)
    try:
        with fresh_dir(tmp_path / "model") as tmp:
            model.save_pretrained(tmp)  # safetensors writes 0600 through a temporary file
        atomic_write_json(tmp_path / "scores.json", {})
    finally:
        os.umask(old)

    def mode(p):
        return stat.S_IMODE(p.stat().st_mode)

    assert mode(tmp_path / "model" / "model.safetensors") == 0o666 & ~umask == mode(tmp_path / "scores.json")
    assert mode(tmp_path / "model" / "config.json") == 0o666 & ~umask
    assert mode(tmp_path / "model") == 0o777 & ~umask


def test_a_file_is_hashed_once_while_unchanged_in_this_process_and_the_next(tmp_path, monkeypatch):
    import hashlib
    import os

    from forgetbench import store

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(store, "_hashes", None)  # this process has hashed nothing yet
    read = []
    sha256 = store._sha256
    monkeypatch.setattr(store, "_sha256", lambda name: read.append(name) or sha256(name))
    files = [tmp_path / "a.bin", tmp_path / "b.bin"]
    for i, f in enumerate(files):
        f.write_bytes(bytes([i]) * 1000)
    want = [hashlib.sha256(f.read_bytes()).hexdigest() for f in files]

    assert store.file_hashes(files) == want and len(read) == 2
    assert store.file_hashes(files) == want and len(read) == 2  # unchanged: not read again
    monkeypatch.setattr(store, "_hashes", None)  # another process: from the cache file
    assert store.file_hashes(files) == want and len(read) == 2
    assert store.hash_cache_path() == tmp_path / "cache" / "forgetbench" / "file-hashes.json"

    # the same size and mtime (as cp -p, rsync -a or tar leave them), other bytes: read again
    st = files[0].stat()
    files[0].write_bytes(b"\x07" * 1000)
    os.utime(files[0], ns=(st.st_atime_ns, st.st_mtime_ns))
    assert files[0].stat().st_size == st.st_size and files[0].stat().st_mtime_ns == st.st_mtime_ns
    assert store.file_hashes(files)[0] == hashlib.sha256(b"\x07" * 1000).hexdigest() and len(read) == 3

    # a damaged cache file costs a hash again, and is written whole again
    store.hash_cache_path().write_text('{"files": {"x": [1, ')
    monkeypatch.setattr(store, "_hashes", None)
    assert store.file_hashes(files)[1] == want[1] and len(read) == 5
    assert set(json.loads(store.hash_cache_path().read_text())["files"]) == {str(f) for f in files}
    assert store.file_digest(files[1]) == want[1][:16] and len(read) == 5


def test_temporary_names_are_the_only_files_the_clean_up_removes(tmp_path):
    from forgetbench.store import remove_partial_files, temporary_name

    point = tmp_path / "points" / "abc"
    point.mkdir(parents=True)
    # a user's own dotfiles, named like the temporary files of old (".X." + 8 letters)
    mine = [tmp_path / ".notes.markdown", tmp_path / ".env.template", tmp_path / ".journal.20241201",
            point / ".model.k2j_x9a1", tmp_path / "checkpoints" / "step_0000002" / ".metadata"]
    mine[-1].parent.mkdir(parents=True)
    for f in mine:
        f.write_text("mine")
    export = point / temporary_name("model")  # a model export a kill cut short
    (export / "sub").mkdir(parents=True)
    (export / "sub" / "model.safetensors").write_text("half")
    (tmp_path / "checkpoints" / temporary_name("step_0000004", "partial")).mkdir(parents=True)
    with pytest.raises(RuntimeError):  # a write cut short leaves nothing
        with fresh_dir(point / "model"):
            raise RuntimeError("killed")
    write = point / temporary_name("point.json")
    write.write_text("{")
    removed = remove_partial_files(tmp_path)
    partial = temporary_name("step_0000004", "partial")
    assert sorted(p.name for p in removed) == sorted([export.name, write.name, partial])
    assert all(f.read_text() == "mine" for f in mine)
    assert sorted(p.name for p in point.iterdir()) == [".model.k2j_x9a1"]


def test_an_unusable_folder_is_refused_in_one_line_before_anything_is_written(tmp_path):
    from forgetbench.errors import ForgetbenchError
    from forgetbench.store import check_writable

    check_writable(tmp_path / "runs" / "medical", "--runs-dir")  # to be made: fine
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "runs").write_text("a file")
    with pytest.raises(ForgetbenchError, match=rf"^--runs-dir {tmp_path}/runs/medical: {tmp_path}/runs is not a fol"):
        check_writable(tmp_path / "runs" / "medical", "--runs-dir")
    if not Path("/sys/kernel").is_dir():
        pytest.skip("no /sys here")
    # root writes through any mode bits, not into /sys (nor a read-only file system)
    with pytest.raises(ForgetbenchError, match=r"^--runs-dir /sys/runs: cannot write in /sys \("):
        check_writable(Path("/sys/runs"), "--runs-dir")
