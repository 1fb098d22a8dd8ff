"""What a piper voice brought with `--piper-voices` costs: resident memory and load time.

`python -m bench.voice_memory [N]` copies the bundled voice under N other names (3 by
default) into a temporary directory, loads them as a server does (each voice twice: a
copy run on one core, and the copy a lone run uses on every core) and prints the
resident memory (RSS) each voice added and how long it took to load. The README's
"Voices an operator brings" quotes these figures.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

from voxrelay_server.engines.piper_engine import (
    CONFIG_SUFFIX,
    MODEL_SUFFIX,
    PiperEngine,
    bundled_joe_voice,
    voice_files,
)

MIB = 1 << 20


def rss_bytes() -> int:
    """This process's resident memory, from /proc (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def main(count: int = 3) -> None:
    model, config = bundled_joe_voice()
    with tempfile.TemporaryDirectory() as directory:
        folder = Path(directory)
        for n in range(count):
            shutil.copyfile(model, folder / f"xx_XX-copy{n}-medium{MODEL_SUFFIX}")
            shutil.copyfile(config, folder / f"xx_XX-copy{n}-medium{CONFIG_SUFFIX}")
        files = voice_files(folder)
        print(f"{'voice':<28} {'RSS added (MiB)':>16} {'load (s)':>9}")
        engines = []  # kept alive, so each voice's memory stays counted
        for pair in files:
            before, started = rss_bytes(), time.perf_counter()
            engines.append(PiperEngine([pair], workers=1))
            print(
                f"{pair[0].stem:<28} {(rss_bytes() - before) / MIB:>16.0f} "
                f"{time.perf_counter() - started:>9.2f}"
            )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
