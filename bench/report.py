"""What every benchmark section returns, and how the suite writes BENCHMARKS.md."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import subprocess
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

ROOT = Path(__file__).resolve().parent.parent
OPTIMISATIONS = ROOT / "bench" / "optimisations.md"
PLOTS = Path(os.environ.get("VOXRELAY_BENCH_PLOTS") or ROOT / "bench" / "plots")
"""Where plots go; the smoke test points it elsewhere so a test run changes no tracked file."""


@dataclass(frozen=True)
class Goal:
    """A target from the performance issue beside the figure measured for it."""

    target: str
    measured: str
    met: bool


@dataclass
class Section:
    """One benchmark's results: a table, the goals it checks, plots and notes."""

    title: str
    method: str
    """How it was measured, in a sentence or two."""
    header: Sequence[str]
    rows: list[Sequence[str]] = field(default_factory=list)
    goals: list[Goal] = field(default_factory=list)
    plots: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        lines = [f"## {self.title}", "", self.method, ""]
        lines.append("| " + " | ".join(self.header) + " |")
        lines.append("|" + " --- |" * len(self.header))
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        if self.goals:
            lines += ["", "| goal | measured | met |", "| --- | --- | --- |"]
            lines += [
                f"| {g.target} | {g.measured} | {'yes' if g.met else '**no**'} |"
                for g in self.goals
            ]
        for plot in self.plots:
            shown = plot.relative_to(ROOT) if plot.is_relative_to(ROOT) else plot
            lines += ["", f"![{plot.stem}]({shown.as_posix()})"]
        if self.notes:
            lines.append("")
            lines += [f"- {note}" for note in self.notes]
        return "\n".join(lines)

    def console(self) -> str:
        widths = [
            max(len(str(cell)) for cell in column)
            for column in zip(self.header, *self.rows, strict=False)
        ]
        out = [f"== {self.title}"]
        for row in [self.header, *self.rows]:
            out.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)))
        for goal in self.goals:
            mark = "ok " if goal.met else "MISS"
            out.append(f"  [{mark}] {goal.target}: {goal.measured}")
        return "\n".join(out)


def save_figure(figure: Figure, path: Path, dpi: int = 110) -> Path:
    """Write a finished figure to `path` (its folder made if needed) and free it."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi)
    plt.close(figure)
    return path


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), nearest-rank on the sorted values."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[rank]


def spread(values: Sequence[float]) -> float:
    """Half the range between the 10th and 90th percentiles: a robust +/-."""
    return (percentile(values, 90) - percentile(values, 10)) / 2


def at_least(value: float, goal: float, digits: int = 2) -> str:
    """`value` to `digits` places, or more where that would round a miss of an
    at-least `goal` up to the goal itself (0.797 against 0.8, not 0.80)."""
    while value < goal and round(value, digits) >= goal and digits < 6:
        digits += 1
    return f"{value:.{digits}f}"


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def machine_line() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}"
    )


def git_revision() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_report(sections: Sequence[Section], *, quick: bool, command: str, path: Path) -> None:
    """Write BENCHMARKS.md: machine, date, commands, then every section."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    header = [
        "# voxrelay benchmarks",
        "",
        f"Written by `{command}` on {now} at revision {git_revision()}"
        + (" (quick mode: fewer repetitions, wider spread)." if quick else "."),
        "",
        f"Machine: {machine_line()}. A shared, noisy machine: every comparison below is",
        "measured side by side in the same run; read medians and ratios, not single runs.",
        "Spreads are half the 10th-90th percentile range unless a table says otherwise.",
        "",
        "Reproduce: `make bench` (about 25 minutes) or `make bench-quick` (a few minutes).",
        "",
    ]
    body = "\n\n".join(section.markdown() for section in sections)
    # The hand-kept log of optimisations and their before/after figures goes last.
    log = OPTIMISATIONS.read_text(encoding="utf-8") if OPTIMISATIONS.exists() else ""
    path.write_text(
        "\n".join(header) + "\n" + body + "\n" + ("\n" + log if log else ""), encoding="utf-8"
    )


def run_alone(
    run: Callable[[bool], Coroutine[Any, Any, Section]],
    argv: Sequence[str] | None,
    *,
    prog: str,
    description: str | None,
    quick_help: str,
) -> int:
    """`python -m bench.NAME [--quick]` for a section: runs it, prints its table, goals
    and notes; exit code 1 when a goal is missed."""
    import argparse
    import asyncio

    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.quick))
    print(result.console())
    for note in result.notes:
        print(f"- {note}")
    return 0 if all(goal.met for goal in result.goals) else 1
