"""The other languages' toolchains for the tests: Node's package and Go's build.

Each test that needs one skips, saying what to install, where it is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NODE_PACKAGE = ROOT / "clients" / "node"
GO_PLUGINS = ("protoc-gen-go", "protoc-gen-go-grpc")
DEBIAN_GOCODE = Path("/usr/share/gocode")
"""Where Debian's golang-*-dev packages put Go sources (GOPATH layout)."""
GO_PACKAGES = "golang-go golang-google-grpc-dev golang-github-golang-protobuf-1-5-dev"

NO_NODE = shutil.which("node") is None or shutil.which("npm") is None
NO_NODE_REASON = "node and npm are needed for clients/node (install Node.js 18 or newer)"
NO_GO = shutil.which("go") is None or not (DEBIAN_GOCODE / "src/google.golang.org/grpc").is_dir()
NO_GO_REASON = f"a Go toolchain and Debian's gRPC sources are needed: apt-get install {GO_PACKAGES}"


def npm(*args: str) -> None:
    """`npm ARGS` in the Node package; its output in the failure message."""
    result = subprocess.run(
        ["npm", *args], cwd=NODE_PACKAGE, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"npm {' '.join(args)}:\n{result.stdout}\n{result.stderr}"


def node_dependencies() -> None:
    """The Node package's dependencies, installed from the npm registry if missing."""
    if not (NODE_PACKAGE / "node_modules" / ".package-lock.json").is_file():
        npm("ci", "--no-audit", "--no-fund")


def build_go(package: str, output: Path) -> None:
    """`go build` a package of this repository offline, against Debian's Go sources
    (GOPATH mode: no module proxy needed)."""
    with tempfile.TemporaryDirectory() as gopath:
        home = Path(gopath) / "src" / "github.com" / "voxrelay"
        home.mkdir(parents=True)
        (home / "voxrelay").symlink_to(ROOT)
        env = {
            **os.environ,
            "GO111MODULE": "off",
            "GOPATH": f"{gopath}:{DEBIAN_GOCODE}",
            "GOFLAGS": "",
        }
        result = subprocess.run(
            ["go", "build", "-o", str(output), package],
            cwd=home / "voxrelay",
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    assert result.returncode == 0, f"go build {package}:\n{result.stdout}\n{result.stderr}"
