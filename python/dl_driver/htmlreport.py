"""An HTML report a person would rather read than the JSON: one self-contained file (no network, no scripts), with
matplotlib's charts inlined as SVG (``pip install 'dl-driver[report]'``): per-epoch throughput and AU against the
workload's threshold, per-stage latency percentiles, checkpoint bandwidth per checkpoint, the run-to-run spread of a
submission's runs, the verdicts with their reasons, and the config that produced each run.

Every chart's data points carry SVG ids (``<chart>-<series>``) so tools (and the tests) can find them."""

from __future__ import annotations

import html
import io
import json
from pathlib import Path
from typing import Any

from dl_driver._core import DlDriverError

STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .5em;text-align:left}
.CLOSED{color:#1a7f37}.OPEN{color:#9a6700}.INVALID{color:#cf222e}pre{background:#f6f8fa;padding:1em;overflow:auto}
figure{margin:1em 0}figcaption{font-size:.9em;color:#555}"""


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("svg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise DlDriverError("the HTML report draws its charts with matplotlib: pip install 'dl-driver[report]'") from e
    plt.rcParams["svg.fonttype"] = "none"  # text stays text: smaller files, selectable labels
    return plt


def _svg(fig: Any) -> str:
    buffer = io.StringIO()
    # No metadata block (its RDF names namespaces by URL; the page must not even look like it fetches anything).
    fig.savefig(
        buffer,
        format="svg",
        bbox_inches="tight",
        metadata={"Creator": None, "Date": None, "Format": None, "Type": None},
    )
    _pyplot().close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg") :]  # drop the XML prolog and doctype: inline SVG


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name)


def epochs_chart(runs: list[dict[str, Any]]) -> str:
    """Throughput (samples/s) and AU (%) per epoch of each run, with the AU threshold."""
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 5.5), sharex=True)
    threshold = None
    for run in runs:
        epochs = run["dl_driver"]["epochs"] if "dl_driver" in run else []
        xs = [e["epoch"] for e in epochs]
        (line,) = top.plot(xs, [e["throughput_samples_per_second"] for e in epochs], marker="o", label=run["run_id"])
        line.set_gid(f"epochs-throughput-{_safe(run['run_id'])}")
        (au,) = bottom.plot(xs, [e["au_percentage"] for e in epochs], marker="o", label=run["run_id"])
        au.set_gid(f"epochs-au-{_safe(run['run_id'])}")
        threshold = 100 * float(run["parameters"].get("metric", {}).get("au", 0.9))
    if threshold is not None:
        bottom.axhline(threshold, color="#cf222e", linestyle="--", label=f"threshold {threshold:g}%").set_gid(
            "epochs-au-threshold"
        )
    top.set_ylabel("samples/s")
    bottom.set_ylabel("AU %")
    bottom.set_xlabel("epoch")
    bottom.xaxis.get_major_locator().set_params(integer=True)
    bottom.legend(fontsize="small")
    return _svg(fig)


def latency_chart(run: dict[str, Any]) -> str:
    """Each stage's p50 / p90 / p99 / p99.9 / max latency (µs, log scale) over all ranks."""
    plt = _pyplot()
    stages = {k: v for k, v in run["dl_driver"]["latency_us"].items() if v.get("count")}
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(stages) + 1.2))
    for i, (stage, values) in enumerate(stages.items()):
        xs = [values[p] for p in ("p50", "p90", "p99", "p99_9", "max")]
        (line,) = ax.plot(xs, [i] * len(xs), marker="o", color="#0969da")
        line.set_gid(f"latency-{_safe(stage)}")
    ax.set_yticks(range(len(stages)), list(stages))
    ax.set_xscale("log")
    ax.set_xlabel("µs (points: p50, p90, p99, p99.9, max)")
    return _svg(fig)


def checkpoint_chart(details: dict[str, Any]) -> str:
    """Bandwidth (GiB/s) of each checkpoint saved or loaded."""
    plt = _pyplot()
    checkpoints = details.get("checkpoints", [])
    fig, ax = plt.subplots(figsize=(8, 3))
    bars = ax.bar(
        range(len(checkpoints)),
        [c["GiB_per_second"] for c in checkpoints],
        color=["#0969da" if c["kind"] == "save" else "#8250df" for c in checkpoints],
    )
    for i, bar in enumerate(bars):
        bar.set_gid(f"checkpoints-{i}")
    ax.set_xticks(range(len(checkpoints)), [f"{c['kind']} {i + 1}" for i, c in enumerate(checkpoints)], rotation=45)
    ax.set_ylabel("GiB/s")
    return _svg(fig)


def spread_chart(name: str, runs: list[dict[str, Any]]) -> str:
    """A submission's runs: each run's mean throughput (the first, the warm-up, hollow)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 2.8))
    values = [r["metrics"].get("train_throughput_mean_samples_per_second") or 0 for r in runs]
    (points,) = ax.plot(range(1, len(values) + 1), values, marker="o", linestyle="none", color="#0969da")
    points.set_gid(f"spread-{_safe(name)}")
    ax.set_xlabel("run (1 = warm-up)")
    ax.set_ylabel("samples/s")
    return _svg(fig)


def _verdicts(items: list[dict[str, Any]]) -> str:
    rows = []
    for v in items:
        reasons = "".join(f"<li>{html.escape(r['division'])}: {html.escape(r['reason'])}</li>" for r in v["reasons"])
        rows.append(
            f'<tr><td>{html.escape(v["subject"])}</td><td class="{v["verdict"]}">{v["verdict"]}</td>'
            f"<td><ul>{reasons}</ul></td></tr>"
        )
    return "<table><tr><th>subject</th><th>verdict</th><th>reasons</th></tr>" + "".join(rows) + "</table>"


def _figure(chart_id: str, caption: str, svg: str) -> str:
    return f'<figure id="{chart_id}">{svg}<figcaption>{html.escape(caption)}</figcaption></figure>'


def render(built: dict[str, Any], details: dict[str, dict[str, Any]]) -> str:
    """The page for a report (``dl_driver.report.build``'s result); ``details`` maps a record's run_id to its
    run's dl_driver_report.json, for the checkpoint chart."""
    records = built["records"]
    ours = [r for r in records if "dl_driver" in r]
    head = f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>dl-driver report</title><style>{STYLE}</style>'
    parts = [
        head + "</head><body><h1>dl-driver report</h1>",
        f"<p>{len(records)} run(s); {len(built['unreadable'])} folder(s) could not be read.</p>",
        "<h2>Verdicts</h2>",
        _verdicts(built["submissions"] + built["runs"]),
    ]
    if built["table"]:
        columns = list(dict.fromkeys(k for row in built["table"] for k in row))
        head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(str(row.get(c, '')))}</td>" for c in columns) + "</tr>"
            for row in built["table"]
        )
        parts += ["<h2>MLPerf results table</h2>", f"<table><tr>{head}</tr>{body}</table>"]
    if ours:
        parts += [
            "<h2>Throughput and AU per epoch</h2>",
            _figure(
                "chart-epochs", "samples/s and AU per epoch; the dashed line is the AU threshold", epochs_chart(ours)
            ),
        ]
    for run in ours:
        name = _safe(run["run_id"])
        parts += [
            f"<h2>Run {html.escape(run['run_id'])}</h2>",
            _figure(f"chart-latency-{name}", "latency per stage over all ranks", latency_chart(run)),
        ]
        if details.get(run["run_id"], {}).get("checkpoints"):
            parts.append(
                _figure(
                    f"chart-checkpoints-{name}",
                    "bandwidth of each checkpoint (blue: save, purple: load)",
                    checkpoint_chart(details[run["run_id"]]),
                )
            )
        parts.append(
            f"<details><summary>config</summary><pre>{html.escape(json.dumps(run['parameters'], indent=2))}"
            "</pre></details>"
        )
    by_folder = dict(zip(built["folders"], records, strict=True))
    for submission, folders in zip(built["submissions"], built["submission_folders"], strict=True):
        members = [by_folder[f] for f in folders if f in by_folder]
        if len(members) > 1:
            parts += [
                f"<h2>Spread: {html.escape(submission['subject'])}</h2>",
                _figure(
                    f"chart-spread-{_safe(submission['subject'])}",
                    "mean throughput of each run",
                    spread_chart(submission["subject"], members),
                ),
            ]
    if built["unreadable"]:
        items = "".join(f"<li>{html.escape(u['folder'])}: {html.escape(u['why'])}</li>" for u in built["unreadable"])
        parts += ["<h2>Unreadable folders</h2>", f"<ul>{items}</ul>"]
    parts.append("</body></html>")
    return "\n".join(parts)


def write(built: dict[str, Any], path: str | Path) -> Path:
    """Renders and writes the page; reads each dl-driver run's dl_driver_report.json for its checkpoints."""
    details = {}
    for record, folder in zip(built["records"], built["folders"], strict=True):
        if (Path(folder) / "dl_driver_report.json").is_file():
            details[record["run_id"]] = json.loads((Path(folder) / "dl_driver_report.json").read_text())
    out = Path(path)
    out.write_text(render(built, details))
    return out
