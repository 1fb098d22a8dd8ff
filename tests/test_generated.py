"""The committed TypeScript and Go code is what `make generate` makes from protos/."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.toolchains import GO_PLUGINS, NO_NODE, NO_NODE_REASON, ROOT, node_dependencies

BUF = Path(sys.executable).parent / "buf"
GENERATED = ("clients/node/src/gen", "gen/go")
"""Every folder buf.gen.yaml writes, relative to the repository."""


def tree(folder: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.mark.skipif(NO_NODE, reason=NO_NODE_REASON)
@pytest.mark.skipif(
    any(shutil.which(plugin) is None for plugin in GO_PLUGINS),
    reason=f"apt-get install {' '.join(GO_PLUGINS)} (Debian packages) to check the Go code",
)
def test_committed_generated_code_is_current(tmp_path: Path) -> None:
    node_dependencies()
    # buf.gen.yaml writes beside protos/: generate into a copy of that layout.
    shutil.copytree(ROOT / "protos", tmp_path / "protos")
    (tmp_path / "clients" / "node").mkdir(parents=True)
    (tmp_path / "clients" / "node" / "node_modules").symlink_to(
        ROOT / "clients" / "node" / "node_modules"
    )
    result = subprocess.run(
        [str(BUF), "generate", "--template", "buf.gen.yaml"],
        cwd=tmp_path / "protos",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    for folder in GENERATED:
        fresh, committed = tree(tmp_path / folder), tree(ROOT / folder)
        assert fresh.keys() == committed.keys(), f"{folder}: run make generate"
        stale = [name for name in fresh if fresh[name] != committed[name]]
        assert not stale, f"{folder}: {stale} differ from the protos: run make generate"
