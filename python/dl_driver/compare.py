"""``dl-driver compare RUN_A RUN_B``: seeded access-order parity between two runs (their access-order digests, per
rank and epoch, equal or the first that differs) and their throughput, AU and latency side by side."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dl_driver._core import DlDriverError

#: summary.json metrics shown side by side.
METRICS = (
    "train_throughput_mean_samples_per_second",
    "train_io_mean_MB_per_second",
    "train_au_mean_percentage",
    "eval_throughput_mean_samples_per_second",
    "save_checkpoint_duration_mean_seconds",
    "load_checkpoint_duration_mean_seconds",
)
#: Latency percentiles shown per stage (dl_driver_report.json latency_all_ranks).
PERCENTILES = ("p50_us", "p99_us", "max_us")


def _read(run: Path, name: str) -> dict[str, Any]:
    path = run / name
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError as e:
        what = (
            "a dl-driver run's (DLIO writes no access-order digests)" if name == "dl_driver_report.json" else "a run's"
        )
        raise DlDriverError(f"{path}: missing: compare needs {what} {name}") from e
    except (OSError, ValueError) as e:
        raise DlDriverError(f"{path}: unreadable: {e}") from e
    if not isinstance(value, dict):
        raise DlDriverError(f"{path}: expected a JSON object")
    return value


def _digests(details: dict[str, Any]) -> list[list[str]]:
    return [[str(d) for d in r.get("digests", [])] for r in details.get("ranks", [])]


def compare_runs(a: str | Path, b: str | Path) -> dict[str, Any]:
    """The comparison of two run folders: ``equal`` (every rank's digest of every epoch), ``first_difference``
    (rank, epoch and both digests, or why they cannot match), and ``metrics`` / ``latency`` side by side."""
    run_a, run_b = Path(a), Path(b)
    da, db = _read(run_a, "dl_driver_report.json"), _read(run_b, "dl_driver_report.json")
    sa, sb = _read(run_a, "summary.json"), _read(run_b, "summary.json")
    ga, gb = _digests(da), _digests(db)
    first: dict[str, Any] | None = None
    if len(ga) != len(gb):
        first = {
            "reason": f"{len(ga)} ranks against {len(gb)}: each rank reads its share of one global order, so "
            "per-rank digests match only at the same rank count"
        }
    else:
        for rank, (ea, eb) in enumerate(zip(ga, gb, strict=True)):
            for epoch in range(max(len(ea), len(eb))):
                x = ea[epoch] if epoch < len(ea) else None
                y = eb[epoch] if epoch < len(eb) else None
                if x != y:
                    first = {"rank": rank, "epoch": epoch + 1, "a": x, "b": y}
                    break
            if first:
                break
    ma, mb = sa.get("metric", {}), sb.get("metric", {})
    metrics = {
        k: {"a": ma.get(k), "b": mb.get(k), "delta": _delta(ma.get(k), mb.get(k))}
        for k in METRICS
        if k in ma or k in mb
    }
    la, lb = da.get("latency_all_ranks", {}), db.get("latency_all_ranks", {})
    latency = {
        stage: {p: {"a": la.get(stage, {}).get(p), "b": lb.get(stage, {}).get(p)} for p in PERCENTILES}
        for stage in sorted(set(la) | set(lb))
    }
    return {
        "a": str(run_a),
        "b": str(run_b),
        "equal": first is None,
        "first_difference": first,
        "ranks": [len(ga), len(gb)],
        "epochs": [max(map(len, ga), default=0), max(map(len, gb), default=0)],
        "metrics": metrics,
        "latency": latency,
    }


def _delta(x: Any, y: Any) -> float | None:
    if isinstance(x, (int, float)) and isinstance(y, (int, float)):
        return float(y) - float(x)
    return None


def render(result: dict[str, Any]) -> str:
    """The comparison as text."""
    lines = [f"A: {result['a']}", f"B: {result['b']}"]
    first = result["first_difference"]
    if first is None:
        ranks, epochs = result["ranks"][0], result["epochs"][0]
        lines.append(f"access order: equal (every digest of {ranks} rank(s) x {epochs} epoch(s))")
    elif "reason" in first:
        lines.append(f"access order: not comparable: {first['reason']}")
    else:
        lines.append(
            f"access order: differs first at epoch {first['epoch']}, rank {first['rank']}: "
            f"{first['a']} (A) vs {first['b']} (B)"
        )
    lines.append(f"{'metric':45} {'A':>14} {'B':>14} {'B - A':>14}")
    for key, v in result["metrics"].items():
        lines.append(f"{key:45} {_num(v['a']):>14} {_num(v['b']):>14} {_num(v['delta']):>14}")
    lines.append(f"{'latency (all ranks), us':45} {'A p50/p99':>21} {'B p50/p99':>21}")
    for stage, v in result["latency"].items():
        a = f"{_num(v['p50_us']['a'])}/{_num(v['p99_us']['a'])}"
        b = f"{_num(v['p50_us']['b'])}/{_num(v['p99_us']['b'])}"
        lines.append(f"{stage:45} {a:>21} {b:>21}")
    return "\n".join(lines)


def _num(v: Any) -> str:
    return "-" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v)
