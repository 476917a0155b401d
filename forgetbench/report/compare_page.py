"""What ``forgetbench compare`` writes and prints, from its result (compare.json's dict): the
terminal table, ``compare.md`` for a pull request and the self-contained ``compare.html``."""
from __future__ import annotations

import html
import io
import json
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt

from forgetbench.report.html import figure
from forgetbench.report.items import flips_section
from forgetbench.report.plots import plain_text
from forgetbench.report.tables import markdown_text as _md
from forgetbench.store import atomic_write_text

matplotlib.use("Agg")


def _p(p: float | None) -> str:
    if p is None:
        return "–"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _d(m: dict, value: float) -> str:
    """A delta in the metric's display units: points for a proportion, else its own."""
    return f"{value * m.get('scale', 100):+.1f}"


def _delta(m: dict) -> str:
    return f"{_d(m, m['delta'])} [{_d(m, m['delta_ci'][0])}, {_d(m, m['delta_ci'][1])}]"


def _mde(m: dict) -> str:
    return f"{m['mde'] * m.get('scale', 100):.1f}"


def _headlines(result: dict) -> list[tuple[dict, dict]]:
    """(task entry, its headline metric's comparison) per task."""
    return [(t, m) for t in result["tasks"] for m in t["metrics"] if m["metric"] == t["headline"]]


def _failing(result: dict) -> list[dict]:
    return [r for r in result["rules"] if not r["passed"]]


def rule_line(r: dict) -> str:
    """A gate hypothesis in one line, e.g. for stderr."""
    verdict = "pass" if r["passed"] else "FAIL"
    side = ">" if r["bound"] > r["threshold"] else "≤"
    weak = ("" if not r["underpowered"] else " (too few items for this margin: the pass says little)" if r["passed"]
            else f" (inconclusive: too few items to show a loss under {r['margin']:g})")
    return (f"{verdict}  {r['text']}: {r['task']} {r['metric']} delta {r['delta']:+.1f}, "
            f"bound {r['bound']:+.1f} {side} {r['threshold']:+.1f}, p (Holm) {_p(r['p_holm'])}{weak}")


def _columns(rows: list[tuple[str, ...]], left: int) -> list[str]:
    """Rows as aligned text: the first ``left`` columns to the left, the others to the right."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
            for r in rows]


def format_terminal(result: dict) -> str:
    """Headline metrics, one row per task, then the gate's tests and the verdict; fits 100
    columns for task names up to 16 characters."""
    rows = [("task", "metric", "n", "base", "cand", "delta [95% CI]", "McNemar", "-/+", "MDE")]
    for t, m in _headlines(result):
        n = f"{m['n']}" + (f"/{m['clusters']}c" if m["clusters"] else "")
        rows.append((t["task"][:16], m["metric"][:12], n, f"{m['base']:.3f}", f"{m['candidate']:.3f}",
                     _delta(m), _p(m["mcnemar_p"]), f"{m['worse']}/{m['better']}", _mde(m)))
    gate = result["gate"]
    tests = [("", "task", "test", "delta", "bound", "threshold", "p (Holm)", "")]
    for r in result["rules"]:
        test = ("non-inferior" if r["test"] == "non_inferior" else "superior") + f" {r['margin']:g}"
        tests.append(("pass" if r["passed"] else "FAIL", r["task"][:16], test, f"{r['delta']:+.1f}",
                      f"{r['bound']:+.1f}", f"{r['threshold']:+.1f}", _p(r["p_holm"]),
                      ("MDE>margin" if r["passed"] else "inconclusive") if r["underpowered"] else ""))
    lines = [*_columns(rows, 2), "",
             "points (candidate − base; a metric not on 0-1 in its units); -/+: items worse/better;",
             "n/Nc: items/clusters; MDE: the smallest delta detectable (80% power)",
             f"gate: one-sided tests, Holm-corrected, alpha {gate['alpha']:g}; pass: bound (at its Holm level) "
             "> threshold",
             *("  " + line for line in _columns(tests, 3))]
    stamp = result.get("mismatch")
    if stamp:
        lines.append("NOT COMPARABLE (compared with --force): " + "; ".join(stamp))
    failing = _failing(result)
    lines.append(f"verdict: {result['verdict']}"
                 + (f" ({len(failing)} of {len(result['rules'])} tests failed)" if failing else ""))
    return "\n".join(lines)


def markdown(result: dict) -> str:
    """compare.md: the verdict and a table of every task metric, to paste into a pull request."""
    b, c = _md(result["base"]["arg"]), _md(result["candidate"]["arg"])
    out = [f"### forgetbench compare: **{result['verdict']}**", "",
           f"{b} (base) vs {c} (candidate), suite {_md(result['suite'])}", ""]
    if result.get("mismatch"):
        out += ["> **Not comparable** (compared with --force): " + _md("; ".join(result["mismatch"])), ""]
    out += ["| task | metric | n | base | candidate | Δ points [95% CI] | McNemar p | worse / better | MDE |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for t in result["tasks"]:
        for m in t["metrics"]:
            name = f"**{_md(t['task'])}**" if m["metric"] == t["headline"] else _md(t["task"])
            out.append(f"| {name} | {_md(m['metric'])} | {m['n']} | {m['base']:.3f} | {m['candidate']:.3f} | "
                       f"{_delta(m)} | {_p(m['mcnemar_p'])} | {m['worse']} / {m['better']} | {_mde(m)} |")
    out += ["", f"Gate (one-sided tests, Holm-corrected, alpha {result['gate']['alpha']:g}):", ""]
    out += [f"- {'✅' if r['passed'] else '❌'} {_md(rule_line(r))}" for r in result["rules"]]
    return "\n".join(out) + "\n"


@plain_text
def forest_plot(result: dict) -> bytes:
    """Each task's headline delta with its 95% paired interval, and the gate's thresholds."""
    heads = _headlines(result)
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(heads) + 1.2))
    for i, (t, m) in enumerate(heads):
        sign = (1 if m["higher_is_better"] else -1) * m.get("scale", 100)
        low, high = sorted((sign * m["delta_ci"][0], sign * m["delta_ci"][1]))
        est = sign * m["delta"]
        ax.errorbar([est], [i], xerr=[[est - low], [high - est]], fmt="o", capsize=4,
                    color="#b22" if t["role"] == "general" and high < 0 else "#225")
    for threshold in sorted({r["threshold"] for r in result["rules"]}):
        ax.axvline(threshold, color="#c80", ls="--", lw=1)
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_yticks(range(len(heads)), [f"{t['task']} ({t['role']})" for t, _ in heads])
    ax.invert_yaxis()
    ax.set_xlabel("candidate − base, points (higher is better; a metric not on 0-1 in its units); "
                  "dashed: gate thresholds")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; padding: 0 1em; }
.verdict { font-size: 1.4em; padding: 0.5em 0.8em; border-radius: 6px; }
.PASS { background: #e3f4e3; } .FAIL { background: #fbe2e2; } .stamp { background: #fff3cd; padding: 0.5em; }
table.t { border-collapse: collapse; font-size: 13px; margin: 0.5em 0 1.5em; }
table.t th, table.t td { padding: 3px 8px; border-bottom: 1px solid #ddd; text-align: right; vertical-align: top; }
table.t th { background: #f4f4f4; } table.flips td { text-align: left; white-space: pre-wrap; }
tr.worse td:nth-child(3), tr.fail td:first-child { color: #b22; } tr.better td:nth-child(3) { color: #272; }
img { max-width: 100%; } pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 12px; }
"""


def _power_note(r: dict) -> str:
    if not r["underpowered"]:
        return ""
    return "too few items for this margin: the pass says little" if r["passed"] else "inconclusive: too few items"


def _cells(values: list[str], cls: str = "") -> str:
    return (f'<tr class="{cls}">' if cls else "<tr>") + "".join(f"<td>{v}</td>" for v in values) + "</tr>"


def render_html(result: dict) -> str:
    """compare.html: verdict first, then the tasks, the gate, the flipped items, the settings."""
    e = html.escape
    b, c = result["base"]["arg"], result["candidate"]["arg"]
    failing = _failing(result)
    verdict = (f'<p class="verdict {result["verdict"]}"><b>{result["verdict"]}</b>: '
               + ("every gate test passed" if not failing else
                  "failed: " + "; ".join(e(f"{r['task']} ({r['text']})") for r in failing)) + "</p>")
    stamp = (f'<p class="stamp"><b>Not comparable</b> (compared with --force): {e("; ".join(result["mismatch"]))}</p>'
             if result.get("mismatch") else "")
    task_rows = [_cells([e(t["task"]), e(t["role"]), e(m["metric"]) + (" ★" if m["metric"] == t["headline"] else ""),
                         str(m["n"]) + (f" ({m['clusters']} clusters)" if m["clusters"] else ""),
                         f"{m['base']:.3f} [{m['base_ci'][0]:.3f}, {m['base_ci'][1]:.3f}]",
                         f"{m['candidate']:.3f} [{m['candidate_ci'][0]:.3f}, {m['candidate_ci'][1]:.3f}]",
                         _delta(m), _p(m["mcnemar_p"]), f"{m['worse']} / {m['better']}", _mde(m)])
                 for t in result["tasks"] for m in t["metrics"]]
    rule_rows = [_cells(["pass" if r["passed"] else "FAIL", e(r["text"]), e(r["task"]), e(r["metric"]),
                         f"{r['delta']:+.1f}", f"{r['bound']:+.1f}", f"{r['threshold']:+.1f}",
                         _p(r["p"]), _p(r["p_holm"]), _power_note(r)], "" if r["passed"] else "fail")
                 for r in result["rules"]]
    forest = figure(forest_plot, result, alt="delta per task with 95% paired intervals")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>forgetbench compare: {e(b)} vs {e(c)}</title>
<style>{_STYLE}</style></head><body>
<h1>{e(b)} (base) vs {e(c)} (candidate)</h1>
{verdict}{stamp}
<p>Suite <b>{e(result['suite'])}</b> · generated {e(result['generated'])}</p>
{forest}
<h2>Tasks</h2>
<p>Scores with 95% intervals (Wilson for 0/1 metrics, else bootstrap; clusters resampled whole where the
task declares them); the delta is candidate − base in points with a paired bootstrap interval
({result['resamples']:,} resamples; a metric not on a 0-1 scale in its own units); McNemar's exact p for 0/1
metrics (items taken as independent, clusters or not); worse / better: items that changed; MDE: the smallest
true delta this many items (clusters) would detect (80% power). ★: the headline metric.</p>
<table class="t"><thead><tr><th>task</th><th>role</th><th>metric</th><th>n</th><th>base</th><th>candidate</th>
<th>Δ points [95% CI]</th><th>McNemar p</th><th>worse / better</th><th>MDE</th></tr></thead>
<tbody>{''.join(task_rows)}</tbody></table>
<h2>Gate</h2>
<p>One-sided tests on the headline delta (oriented so higher is better), Holm-corrected across all
{len(result['rules'])} at alpha {result['gate']['alpha']:g}: a test passes when its Holm-adjusted p is below
alpha, that is when the lower bound of its interval at its own Holm level (alpha / the tests not yet passed)
is above the threshold.</p>
<table class="t"><thead><tr><th></th><th>rule</th><th>task</th><th>metric</th><th>Δ</th><th>bound</th>
<th>threshold</th><th>p</th><th>p (Holm)</th><th></th></tr></thead><tbody>{''.join(rule_rows)}</tbody></table>
<h2>Items that changed (headline metric)</h2>
{flips_section(result['flips'], base='base', candidate='candidate')}
<details><summary>Settings and versions both evaluations come from</summary>
<pre>{e(json.dumps({'base': result['base'], 'candidate': result['candidate'], 'settings': result['settings']},
               indent=2))}</pre></details>
</body></html>
"""


def write_outputs(result: dict, out: Path) -> None:
    """compare.json, compare.md and compare.html into ``out``: all three made first, then each
    written whole, so a failure leaves the previous outputs as they were."""
    made = {"compare.json": json.dumps(result, indent=2) + "\n", "compare.md": markdown(result),
            "compare.html": render_html(result)}
    out.mkdir(parents=True, exist_ok=True)
    for name, text in made.items():
        atomic_write_text(out / name, text)
