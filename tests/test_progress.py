"""The live progress line a sweep keeps under its lines on a terminal."""
from __future__ import annotations

import io
import json

from forgetbench.progress import LiveLine, progress_line
from forgetbench.store import Event, RunStore


def run_with_three_points(tmp_path) -> RunStore:
    store = RunStore(tmp_path / "run")
    store.append(Event.POINT_STARTED, point="aaaaaa000001")
    store.append(Event.POINT_TRAINED, point="aaaaaa000001", summary={})
    store.append(Event.POINT_EVALUATED, point="aaaaaa000001", eval_key="k1")
    store.append(Event.POINT_STARTED, point="bbbbbb000002")
    log = store.point_dir("bbbbbb000002") / "train_log.jsonl"
    log.parent.mkdir(parents=True)
    log.write_text("".join(json.dumps({"step": s, "loss": 2.0 / s, "tokens_per_s": 5120.0, "total_steps": 390}) + "\n"
                           for s in range(1, 121)))
    store.append(Event.POINT_STARTED, point="cccccc000003")
    store.append(Event.POINT_TRAINED, point="cccccc000003", summary={})
    return store


def test_the_line_counts_points_done_and_shows_each_running_point(tmp_path):
    store = run_with_three_points(tmp_path)
    ids = ["aaaaaa000001", "bbbbbb000002", "cccccc000003", "dddddd000004"]
    line = progress_line(store, ids, "k1", lanes=2, width=200, now=0.0)
    assert line.startswith("[###---------] 1/4 points")
    assert "bbbbbb step 120/390 loss 0.0167 5.1k tok/s" in line and "cccccc evaluating" in line
    # under another eval key nothing is done yet
    assert "0/4 points" in progress_line(store, ids, "k2", lanes=2, width=200, now=0.0)
    assert len(progress_line(store, ids, "k1", lanes=2, width=40, now=0.0)) <= 40  # fits the terminal


def test_lines_print_above_the_live_line_which_is_cleared_at_the_end(tmp_path):
    store = run_with_three_points(tmp_path)
    out = io.StringIO()
    with LiveLine(store.root, ["aaaaaa000001", "bbbbbb000002"], "k1", 1, stream=out, every=0.05) as live:
        live.echo("[2/2] point bbbbbb000002: training")
    text = out.getvalue()
    assert "[2/2] point bbbbbb000002: training\n\r\x1b[K[######------] 1/2 points" in text
    assert text.endswith("\r\x1b[K")  # nothing of the live line is left under the sweep's last line
