"""The in-process reference: `StreamedAudioResult` from the `openai-agents` package.

Installed only for the benchmark (`pip install .[bench]`). It is driven the way
its own `VoicePipeline` drives it: `_add_text` per chunk, `_turn_done`, `_done`,
with `stream()` consumed concurrently.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
from agents.voice import (
    StreamedAudioResult,
    TTSModel,
    TTSModelSettings,
    VoicePipelineConfig,
    VoiceStreamEventAudio,
)


class LatencyTTSModel(TTSModel):
    """A TTS model with a fixed first-audio latency: the reference's side of the tone engine.

    Like `tone`, it waits `first_audio_s`, then yields `ms_per_char` of int16 audio per
    character (16 kHz) in 20 ms frames, paced at `realtime_factor`.
    """

    def __init__(
        self, first_audio_s: float, *, ms_per_char: float = 10.0, realtime_factor: float = 0.0
    ) -> None:
        self.first_audio_s = first_audio_s
        self.ms_per_char = ms_per_char
        self.realtime_factor = realtime_factor

    @property
    def model_name(self) -> str:
        return "latency-model"

    async def run(self, text: str, settings: TTSModelSettings) -> AsyncIterator[bytes]:
        await asyncio.sleep(self.first_audio_s)
        total = round(len(text) * self.ms_per_char * 16)
        frame = 320
        data = np.full(total, 1000, dtype="<i2").tobytes()
        for start in range(0, total * 2, frame * 2):
            await asyncio.sleep(self.realtime_factor * frame / 16000)
            yield data[start : start + frame * 2]


def reference_result(model: TTSModel) -> StreamedAudioResult:
    # buffer_size=1: hand audio on per engine chunk, as voxrelay does with chunk_ms=0.
    return StreamedAudioResult(model, TTSModelSettings(buffer_size=1), VoicePipelineConfig())


async def first_audio(result: StreamedAudioResult) -> AsyncIterator[VoiceStreamEventAudio]:
    async for event in result.stream():
        if isinstance(event, VoiceStreamEventAudio):
            yield event
