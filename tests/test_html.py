"""The HTML report, opened in a real headless browser (Debian's chromium, installed by the test command): it loads
without console errors or network requests, every chart holds its data points, and its screenshot is not blank."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from PIL import Image

import dl_driver

SVG = "{http://www.w3.org/2000/svg}"


def charts(page: str) -> dict[str, ET.Element]:
    """Each figure's inline SVG, parsed, by the figure's id."""
    found = {}
    for match in re.finditer(r'<figure id="([^"]+)">(<svg.*?</svg>)', page, re.DOTALL):
        found[match.group(1)] = ET.fromstring(match.group(2))
    return found


def points(svg: ET.Element, gid: str) -> int:
    """The markers (data points) of the series whose SVG id is ``gid``."""
    group = next(e for e in svg.iter() if e.get("id") == gid)
    return sum(1 for e in group.iter(f"{SVG}use"))


def chromium(*args: str) -> subprocess.CompletedProcess[str]:
    found = shutil.which("chromium")
    assert found, "chromium is missing: the test command installs it (Debian's chromium)"
    return subprocess.run([found, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
                           *args], capture_output=True, text=True, timeout=120, check=False)


def test_the_html_report_renders_every_chart_with_its_points_in_a_real_browser(cli: Any, tmp_path: Path) -> None:
    tree = tmp_path / "results"
    done = cli("run", "workload=quickstart", f"++workload.dataset.data_folder={tmp_path / 'd'}", "++workload.train.epochs=3",
               "++workload.workflow.checkpoint=True", "++workload.checkpoint.steps_between_checkpoints=16",
               f"++workload.checkpoint.checkpoint_folder={tmp_path / 'ckpt'}", "++workload.model.model_size_bytes=65536",
               f"++workload.output.folder={tree}", "--runs", "2")
    assert done.returncode == 0, done.stderr
    page_path = tmp_path / "report.html"
    made = cli("report", str(tree), "-o", str(tmp_path / "out"), "--html", str(page_path))
    assert made.returncode == 0, made.stderr
    page = page_path.read_text()
    # Self-contained: no script, no stylesheet link, nothing loaded from a URL.
    assert "<script" not in page and "<link" not in page and not re.search(r'(src|href)="(https?:)?//', page)
    found = charts(page)
    runs = json.loads((tree / "runs.json").read_text())["runs"]
    names = [r["folder"] for r in runs]
    # Per-epoch throughput and AU: 3 points per run, and the threshold line.
    for name in names:
        safe = "".join(c if c.isalnum() else "-" for c in name)
        assert points(found["chart-epochs"], f"epochs-throughput-{safe}") == 3
        assert points(found["chart-epochs"], f"epochs-au-{safe}") == 3
        # Latency: 5 points (p50, p90, p99, p99.9, max) for every stage the run measured.
        details = json.loads((tree / name / "dl_driver_report.json").read_text())
        stages = [s for s, v in details["latency_all_ranks"].items() if v["count"]]
        latency = found[f"chart-latency-{safe}"]
        assert stages and all(points(latency, f"latency-{s.replace('_', '-')}") == 5 for s in stages)
        # Checkpoints: one bar per checkpoint of the run.
        bars = [e for e in found[f"chart-checkpoints-{safe}"].iter() if (e.get("id") or "").startswith("checkpoints-")]
        assert len(bars) == len(details["checkpoints"]) > 0
    assert any(e.get("id") == "epochs-au-threshold" for e in found["chart-epochs"].iter())
    spread = next(svg for chart_id, svg in found.items() if chart_id.startswith("chart-spread-"))
    assert points(spread, next(e.get("id") for e in spread.iter() if (e.get("id") or "").startswith("spread-"))) == 2
    assert "INVALID" in page and "quickstart" in page  # the verdicts, with their reasons

    dom = chromium("--dump-dom", page_path.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count("<figure") == page.count("<figure") and "chart-epochs" in dom.stdout
    problems = [line for line in dom.stderr.splitlines()
                if "CONSOLE" in line or "Uncaught" in line or "Failed to load resource" in line]
    assert problems == [], problems
    shot = tmp_path / "shot.png"
    taken = chromium(f"--screenshot={shot}", "--window-size=1200,2400", page_path.as_uri())
    assert taken.returncode == 0 and shot.is_file(), taken.stderr[-2000:]
    with Image.open(shot) as image:
        colors = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colors is not None and len(colors) > 50, "the screenshot is (nearly) blank"


def test_report_to_html_writes_one_run(tmp_path: Path) -> None:
    cfg = dl_driver.load_dlio_config("quickstart", {"dataset.data_folder": str(tmp_path / "d"),
                                                    "output.folder": str(tmp_path / "out"), "train.epochs": 2})
    page = dl_driver.DlioRunner(cfg).run_benchmark().to_html(tmp_path / "run.html").read_text()
    found = charts(page)
    assert "chart-epochs" in found and any(k.startswith("chart-latency-") for k in found)
