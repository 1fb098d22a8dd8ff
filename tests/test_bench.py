"""Smoke test: the quick benchmark suite runs end to end and writes its report and plots."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bench.__main__ import SECTIONS

ROOT = Path(__file__).resolve().parent.parent


def test_bench_quick_runs_and_writes_its_report(tmp_path: Path) -> None:
    report = tmp_path / "BENCHMARKS.md"
    env = {**os.environ, "VOXRELAY_BENCH_PLOTS": str(tmp_path / "plots")}
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--output", str(report)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    text = report.read_text(encoding="utf-8")
    assert "quick mode" in text
    assert text.count("\n## ") == len(SECTIONS) + 1  # the sections, then the optimisation log
    assert "## What was changed to move the figures" in text
    assert "| goal | measured | met |" in text
    plots = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert plots, "no plot was written"
    for name in plots:
        assert (tmp_path / "plots" / name).stat().st_size > 10_000  # a real picture
