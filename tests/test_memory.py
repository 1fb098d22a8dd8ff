"""The memory bound of a server's settings (`make bench` measures it against the real thing)."""

from __future__ import annotations

import subprocess
import sys

from voxrelay_server.app import settings_memory_bound
from voxrelay_server.config import ServerSettings
from voxrelay_server.engines.tone import ToneEngine
from voxrelay_server.memory import (
    MIB,
    PIPER_RUN_BYTES,
    memory_bound,
    segment_audio_bytes,
)
from voxrelay_server.service import CallSlot, SpeechService
from voxrelay_server.voices import VoiceCatalog


def test_each_setting_moves_its_own_term() -> None:
    base = {
        "max_sessions": 10,
        "piper_workers": 2,
        "synthesis_slots": 4,
        "max_segment_chars": 400,
        "session_audio_buffer_bytes": MIB,
        "max_buffered_text_chars": 65536,
    }
    bound = memory_bound(**base)
    segment = segment_audio_bytes(400)
    assert bound.piper_runs == 2 * PIPER_RUN_BYTES
    assert bound.session_audio == 10 * (MIB + segment)
    assert bound.slot_audio == 4 * segment
    assert bound.total == sum(vars(bound).values())
    # Twice the sessions: every per-session term doubles, the others stay.
    doubled = memory_bound(**(base | {"max_sessions": 20}))
    assert doubled.session_audio == 2 * bound.session_audio
    assert doubled.session_text == 2 * bound.session_text
    assert (doubled.piper_runs, doubled.slot_audio) == (bound.piper_runs, bound.slot_audio)
    # Half the segment length halves what one segment's audio can be.
    assert segment_audio_bytes(200) == segment // 2
    assert "MiB above idle" in bound.describe()


def test_a_servers_bound_follows_its_settings_and_engines() -> None:
    tone = ToneEngine(concurrency=8)
    service = SpeechService(VoiceCatalog([tone], "tone/square"), default_max_inflight_segments=4)
    settings = ServerSettings(engines=("tone",), max_sessions=3, max_segment_chars=100)
    bound = settings_memory_bound(settings, service)
    assert bound.piper_runs == 0  # no piper engine loaded
    assert bound.slot_audio == 8 * segment_audio_bytes(100)
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
