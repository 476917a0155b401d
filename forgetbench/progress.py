"""A sweep's progress on a terminal: one live line under its log lines, redrawn every second
from the run directory (the journal and each running point's ``train_log.jsonl``), so it
shows the same whether the points run here or as cluster jobs:

    [######------]  9/23 points, ETA 2.4 min | 3f2a1c step 120/390 loss 1.83 5.1k tok/s | 77b0e2 evaluating

Off a terminal there is no live line: the sweep prints its timestamped lines only.
"""
from __future__ import annotations

import shutil
import sys
import threading
import time
from pathlib import Path
from typing import TextIO

from forgetbench.status import PointView, eta_seconds
from forgetbench.store import RunStore


def _rate(tokens_per_s: float) -> str:
    return f"{tokens_per_s / 1000:.1f}k tok/s" if tokens_per_s >= 1000 else f"{tokens_per_s:.0f} tok/s"


def progress_line(store: RunStore, ids: list[str], key: str, lanes: int, width: int, now: float) -> str:
    """The live line: the points evaluated under eval key ``key`` of ``ids``, a bar, the ETA
    from the points measured so far, and each running point's step, loss and tokens/s."""
    states = store.states()
    done, views, running = 0, [], []
    for pid in ids:
        st = states.get(pid)
        if st is not None and key in st.eval_keys:
            done += 1
            views.append(PointView(pid, "evaluated", "", ""))
            continue
        state = "pending" if st is None else st.status
        views.append(PointView(pid, state, "", ""))
        if state == "running":
            log = store.train_log(pid)
            last = log[-1] if log else None
            if last is None or last.get("step", 0) == 0:
                running.append(f"{pid[:6]} starting")
            else:
                total = f"/{last['total_steps']}" if "total_steps" in last else ""
                running.append(f"{pid[:6]} step {last['step']}{total} loss {last.get('loss', float('nan')):.3g} "
                               + _rate(float(last.get("tokens_per_s", 0.0))))
        elif state == "trained":
            running.append(f"{pid[:6]} evaluating")
    cells = 12
    filled = round(cells * done / max(len(ids), 1))
    eta = eta_seconds(store, views, lanes, now)
    head = f"[{'#' * filled}{'-' * (cells - filled)}] {done}/{len(ids)} points"
    if done < len(ids):
        head += f", ETA {_minutes(eta)}" if eta is not None else ", ETA after the first point"
    line = " | ".join([head, *running])
    return line if len(line) < width else line[:max(width - 2, 1)] + "…"


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


class LiveLine:
    """Print a sweep's lines (:meth:`echo`) with the live line kept under them."""

    def __init__(self, run_dir: Path, ids: list[str], key: str, lanes: int, stream: TextIO = sys.stdout,
                 every: float = 1.0):
        self.store, self.ids, self.key, self.lanes = RunStore(run_dir), ids, key, lanes
        self.stream, self.every = stream, every
        self._lock = threading.Lock()
        self._shown = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="forgetbench-progress")

    def __enter__(self) -> LiveLine:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        with self._lock:
            self._clear()

    def echo(self, msg: str) -> None:
        with self._lock:
            self._clear()
            print(msg, file=self.stream, flush=True)
            self._draw()

    def _clear(self) -> None:
        if self._shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._shown = False

    def _draw(self) -> None:
        try:
            line = progress_line(self.store, self.ids, self.key, self.lanes,
                                 shutil.get_terminal_size().columns, time.time())
        except Exception:  # a file being replaced, a journal mid-append: the next redraw shows it
            return
        self.stream.write("\r\x1b[K" + line)
        self.stream.flush()
        self._shown = True

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            with self._lock:
                self._draw()
