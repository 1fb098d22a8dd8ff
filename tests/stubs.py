"""The generated Python stubs: make them from protos/, or check the committed ones.

The messages, gRPC stubs and their type stubs in client/voxrelay/v1/ are committed,
so the client wheel and sdist build with nothing but setuptools; this module is how
they are made (`make proto`) and how `make lint` and the tests know they are current.

    python -m tests.stubs client     generate into client/voxrelay/v1/
    python -m tests.stubs --check    exit 1, naming the files, if they differ
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
CLIENT = ROOT / "client"
PACKAGE = Path("voxrelay") / "v1"
GENERATED = ("*_pb2.py", "*_pb2.pyi", "*_pb2_grpc.py", "*_pb2_grpc.pyi")


def generate(out: Path) -> None:
    """Run protoc (grpcio-tools) with the Python, gRPC and mypy-protobuf plugins."""
    bin_dir = Path(sys.executable).parent  # protoc-gen-mypy lives beside the interpreter
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    protos = sorted(str(p.relative_to(PROTOS)) for p in (PROTOS / PACKAGE).glob("*.proto"))
    (out / PACKAGE).mkdir(parents=True, exist_ok=True)
    made = subprocess.run(
        [
            sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTOS}",
            f"--python_out={out}", f"--mypy_out={out}",
            f"--grpc_python_out={out}", f"--mypy_grpc_out={out}",
            *protos,
        ],
        env=env,
        capture_output=True,  # the mypy plugin's "Writing mypy to ..." lines
        text=True,
        check=False,
    )  # fmt: skip
    if made.returncode != 0:
        raise RuntimeError(f"protoc failed:\n{made.stdout}{made.stderr}")


def generated_files(root: Path) -> dict[str, bytes]:
    """The generated files under `root`'s voxrelay/v1/, by name."""
    return {
        path.name: path.read_bytes()
        for pattern in GENERATED
        for path in sorted((root / PACKAGE).glob(pattern))
    }


def stale_files() -> list[str]:
    """Files of client/voxrelay/v1/ that differ from what the protos make (or are
    missing from one side); empty when the committed stubs are current."""
    with tempfile.TemporaryDirectory() as scratch:
        generate(Path(scratch))
        fresh = generated_files(Path(scratch))
    committed = generated_files(CLIENT)
    return sorted(
        name for name in fresh.keys() | committed.keys() if fresh.get(name) != committed.get(name)
    )


def main(argv: list[str]) -> int:
    if argv == ["--check"]:
        stale = stale_files()
        if stale:
            print(
                f"client/voxrelay/v1/ does not match protos/: {', '.join(stale)}; "
                "run `make proto` and commit the result",
                file=sys.stderr,
            )
            return 1
        return 0
    if len(argv) == 1:
        generate(Path(argv[0]))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
