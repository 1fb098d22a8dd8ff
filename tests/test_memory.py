"""The memory bound of a server's settings (`make bench` measures it against the real thing)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence

from voxrelay_server.app import settings_memory_bound
from voxrelay_server.config import ServerSettings
from voxrelay_server.engines.tone import ToneEngine
from voxrelay_server.memory import (
    MIB,
    PIPER_RUN_BYTES,
    EngineMemory,
    MemoryBound,
    memory_bound,
)
from voxrelay_server.service import CallSlot, SpeechService
from voxrelay_server.voices import VoiceCatalog

PIPER = EngineMemory(slots=2, max_chunk_bytes=MIB, paused_segment_bytes=0)
ESPEAK = EngineMemory(slots=2, max_chunk_bytes=MIB // 8, paused_segment_bytes=4 * MIB)


def bound_for(
    *, max_sessions: int = 10, engines: Sequence[EngineMemory] = (PIPER, ESPEAK)
) -> MemoryBound:
    return memory_bound(
        max_sessions=max_sessions,
        piper_runs=2,
        engines=engines,
        session_audio_buffer_bytes=MIB,
        max_buffered_text_chars=65536,
    )


def test_each_setting_moves_its_own_term() -> None:
    bound = bound_for()
    assert bound.piper_runs == 2 * PIPER_RUN_BYTES
    # Every session on the costliest engine: espeak's look-ahead outweighs piper's runs.
    assert bound.session_audio == 10 * (2 * MIB + 3 * MIB // 8)
    assert bound.engine_lookahead == 10 * (MIB + 3 * 4 * MIB)
    assert bound.total == sum(vars(bound).values())
    # Twice the sessions: every per-session term doubles, the others stay.
    doubled = bound_for(max_sessions=20)
    assert doubled.session_audio == 2 * bound.session_audio
    assert doubled.session_text == 2 * bound.session_text
    assert doubled.piper_runs == bound.piper_runs
    # An engine that makes audio only when asked keeps nothing for paused segments.
    piper_only = bound_for(engines=[PIPER])
    assert piper_only.engine_lookahead == 0
    assert piper_only.session_audio == 10 * (2 * MIB + 3 * MIB)
    assert "MiB above idle" in bound.describe()


def test_a_servers_bound_follows_its_settings_and_engines() -> None:
    tone = ToneEngine(concurrency=8)
    service = SpeechService(VoiceCatalog([tone], "tone/square"), default_max_inflight_segments=4)
    settings = ServerSettings(engines=("tone",), max_sessions=3, session_audio_buffer_bytes=MIB)
    bound = settings_memory_bound(settings, service)
    assert bound.piper_runs == 0  # no piper engine loaded
    assert bound.session_audio == 3 * (2 * MIB + 9 * tone.max_chunk_bytes)
    assert bound.engine_lookahead == 0
    assert bound.session_overhead == 3 * MIB


def test_the_last_place_given_back_tells_the_server_it_is_idle() -> None:
    held: set[CallSlot] = set()
    idle: list[bool] = []
    first, second = (
        CallSlot(held, lambda: idle.append(True)),
        CallSlot(held, lambda: idle.append(True)),
    )
    first.release()
    first.release()  # again: no effect
    assert idle == []
    second.release()
    second.release()
    assert idle == [True]


def test_trimming_the_heap_gives_a_bursts_small_blocks_back() -> None:
    """Blocks under the mmap threshold are freed into the heap, which keeps the holes
    they leave between blocks still in use."""
    script = """
import psutil
from voxrelay_server.memory import trim_heap, tune_allocator
tune_allocator()
process = psutil.Process()
before = process.memory_info().rss
blocks = [bytes(64 * 1024) for _ in range(2000)]  # 125 MiB, each under the threshold
del blocks[::2]  # half freed, each hole between two blocks still in use
freed = process.memory_info().rss
assert trim_heap()
print((freed - before) >> 20, (process.memory_info().rss - before) >> 20)
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    kept_after_free, kept_after_trim = map(int, result.stdout.split())
    assert kept_after_free > 70, result.stdout  # 62 MiB in use, the holes still the process's
    assert kept_after_trim < kept_after_free - 25, result.stdout  # the holes' pages given back
