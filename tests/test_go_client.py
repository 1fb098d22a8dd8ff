"""The generated Go code (`gen/go`) builds, and its example speaks through a real server.

Built offline against Debian's Go packages; skipped, saying what to install, where
they are missing.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.processes import (
    ServeProcess,
    running_serve,
)
from tests.toolchains import NO_GO, NO_GO_REASON, build_go

pytestmark = pytest.mark.skipif(NO_GO, reason=NO_GO_REASON)


@pytest.fixture(scope="module")
def speak(tmp_path_factory: pytest.TempPathFactory) -> Path:
    binary = tmp_path_factory.mktemp("go") / "speak"
    build_go("./examples/go/speak", binary)
    return binary


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with running_serve(["--engines", "piper,espeak"], log) as running:
        yield running


def test_the_go_example_speaks_two_turns_in_order(speak: Path, served: ServeProcess) -> None:
    result = subprocess.run(
        [str(speak), "-target", served.target, "-language", "de"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    kinds = [
        " ".join(line.split()[:2]) if line.startswith("lifecycle") else line.split()[0]
        for line in lines
    ]
    # Each turn's audio messages collapsed into one: start, audio, end per turn, then the end.
    order = [kind for i, kind in enumerate(kinds) if i == 0 or kind != kinds[i - 1]]
    assert order[:-1] == [
        "lifecycle LIFECYCLE_EVENT_TURN_STARTED",
        "audio",
        "lifecycle LIFECYCLE_EVENT_TURN_ENDED",
        "lifecycle LIFECYCLE_EVENT_TURN_STARTED",
        "audio",
        "lifecycle LIFECYCLE_EVENT_TURN_ENDED",
        "lifecycle LIFECYCLE_EVENT_SESSION_ENDED",
    ]
    assert lines[-1].startswith("voice=espeak/de samples=")
    assert int(lines[-1].rpartition("=")[2]) > 22050  # over a second of speech


def test_the_go_example_reports_the_servers_status(speak: Path, served: ServeProcess) -> None:
    result = subprocess.run(
        [str(speak), "-target", served.target, "-language", "xx"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "voxrelay: InvalidArgument: no voice speaks language_code 'xx'" in result.stderr
