"""The speech service: opens sessions on the right voice with validated settings."""

from __future__ import annotations

from voxrelay_server.dispatcher import SessionDispatcher
from voxrelay_server.engines.base import SynthesisOptions, VoiceInfo
from voxrelay_server.settings import SessionRequest, validate_request
from voxrelay_server.voices import VoiceCatalog


class SpeechService:
    """What the transport calls: list voices, open a session."""

    def __init__(self, catalog: VoiceCatalog, *, default_max_inflight_segments: int) -> None:
        self.catalog = catalog
        self.default_max_inflight_segments = default_max_inflight_segments

    def voices(self) -> list[VoiceInfo]:
        """Every voice offered, the default first."""
        return self.catalog.voices()

    def open_session(self, request: SessionRequest) -> SessionDispatcher:
        """A dispatcher for one session; raises `SpeechError` on a bad configuration."""
        engine, voice = self.catalog.resolve(request.voice)
        settings = validate_request(
            request,
            voice=voice.name,
            native_sample_rate_hz=voice.native_sample_rate_hz,
            default_max_inflight_segments=self.default_max_inflight_segments,
        )
        options = SynthesisOptions(speed=settings.speed, instructions=settings.instructions)
        return SessionDispatcher(
            lambda text: engine.synthesize(voice, text, options),
            native_rate_hz=voice.native_sample_rate_hz,
            output=settings.output,
            min_sentence_chars=settings.min_sentence_chars,
            max_inflight_segments=settings.max_inflight_segments,
        )

    async def aclose(self) -> None:
        """Release every engine's threads and connections."""
        for engine in self.catalog.engines:
            await engine.aclose()
