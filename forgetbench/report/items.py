"""Item-level diffs in the HTML pages: the items that flipped between two models, filterable
in the page by task, direction and (in a sweep report) point, with plain inline JS.

Every text here (task names, prompts, answers) comes from a suite, a dataset or a model, and
is escaped; the filter compares ``data-`` attributes, never inserts markup.
"""
from __future__ import annotations

import html
from collections.abc import Sequence

_DIRECTIONS = (("worse", "worse (0/1 metrics: right → wrong)"), ("better", "better (0/1 metrics: wrong → right)"))

# Hides the rows the selects exclude and counts the rest; runs once on load, then on change.
_SCRIPT = """<script>
(function () {
  var section = document.getElementById("flips");
  var selects = section.querySelectorAll("select[data-key]");
  function apply() {
    var shown = 0;
    section.querySelectorAll("tbody tr").forEach(function (row) {
      var keep = true;
      selects.forEach(function (s) { if (s.value && row.dataset[s.dataset.key] !== s.value) keep = false; });
      row.hidden = !keep;
      if (keep) shown += 1;
    });
    document.getElementById("flips-shown").textContent = String(shown);
  }
  selects.forEach(function (s) { s.addEventListener("change", apply); });
  apply();
})();
</script>"""


def _options(values: Sequence[tuple[str, str]], everything: str) -> str:
    return f'<option value="">{html.escape(everything)}</option>' + "".join(
        f'<option value="{html.escape(v)}">{html.escape(text)}</option>' for v, text in values)


def _select(key: str, label: str, values: Sequence[tuple[str, str]], everything: str,
            selected: str = "") -> str:
    options = _options(values, everything)
    if selected:
        mark = f'value="{html.escape(selected)}"'
        options = options.replace(mark, mark + " selected", 1)
    return (f'<label>{html.escape(label)} <select id="flip-{key}" data-key="{key}">'
            f"{options}</select></label>")


def flips_section(flips: Sequence[dict], *, base: str, candidate: str,
                  points: dict[str, str] | None = None, point: str = "") -> str:
    """The flipped items as a filterable table. ``flips``: dicts with task, direction, doc_id,
    prompt, target, base_answer, candidate_answer (and ``point`` with ``points``, its label by
    id, for a sweep's points against the base; ``point`` is the one selected on load)."""
    if not flips:
        return (f'<section id="flips"><p>No item changed between {html.escape(base)} and '
                f'{html.escape(candidate)}.</p><span id="flips-shown" hidden>0</span></section>')
    tasks = sorted({f["task"] for f in flips})
    controls = [_select("task", "task", [(t, t) for t in tasks], "every task"),
                _select("direction", "direction", _DIRECTIONS, "both directions")]
    if points:
        controls.insert(0, _select("point", "point", list(points.items()), "every point", point))
    head = "<th>point</th>" if points else ""
    rows = []
    for f in flips:
        attrs = (f' data-task="{html.escape(f["task"])}" data-direction="{f["direction"]}"'
                 + (f' data-point="{html.escape(f["point"])}"' if points else ""))
        cells = [html.escape(points[f["point"]]) if points else None, html.escape(f["task"]),
                 str(f["doc_id"]), "worse" if f["direction"] == "worse" else "better",
                 html.escape(f["prompt"]), html.escape(f["target"]),
                 html.escape(f["base_answer"]), html.escape(f["candidate_answer"])]
        rows.append(f'<tr class="{f["direction"]}"{attrs}>'
                    + "".join(f"<td>{c}</td>" for c in cells if c is not None) + "</tr>")
    return (f'<section id="flips"><p class="filters">{" ".join(controls)} '
            f'<span class="count"><span id="flips-shown">{len(flips)}</span> of {len(flips)} items shown'
            "</span></p>"
            f'<table class="t flips"><thead><tr>{head}<th>task</th><th>doc</th><th>change</th>'
            f"<th>prompt</th><th>gold</th><th>{html.escape(base)}</th><th>{html.escape(candidate)}</th>"
            f"</tr></thead><tbody>{''.join(rows)}</tbody></table></section>{_SCRIPT}")
