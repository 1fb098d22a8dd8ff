"""Any OpenAI-compatible speech endpoint (`POST {base_url}/audio/speech`, streamed PCM).

OpenAI's `response_format=pcm` is 24 kHz, 16-bit signed little-endian mono;
compatible local servers (for example those that front open models) speak the
same protocol. Configured by the `openai_*` server settings.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import httpx

from voxrelay_server.engines.base import SpeechEngine, SynthesisOptions, VoiceInfo
from voxrelay_server.errors import EngineError, ErrorCode

ENGINE_NAME = "openai"
PCM_SAMPLE_RATE_HZ = 24000
DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MODEL = "gpt-4o-mini-tts"
DEFAULT_VOICES = (
    "alloy",
    "ash",
    "ballad",
    "coral",
    "echo",
    "fable",
    "nova",
    "onyx",
    "sage",
    "shimmer",
    "verse",
)
_STATUS_CODES = {
    400: ErrorCode.INVALID_ARGUMENT,
    401: ErrorCode.UNAUTHENTICATED,
    403: ErrorCode.PERMISSION_DENIED,
    404: ErrorCode.FAILED_PRECONDITION,
    429: ErrorCode.RESOURCE_EXHAUSTED,
}


class OpenAIEngine(SpeechEngine):
    """Streams speech from an OpenAI-compatible `/audio/speech` endpoint."""

    name = ENGINE_NAME

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str = "",
        model: str = DEFAULT_MODEL,
        voices: Sequence[str] = DEFAULT_VOICES,
        timeout_s: float = 30.0,
        concurrency: int = 32,
    ) -> None:
        self.max_concurrency = concurrency
        self.base_url = base_url.rstrip("/")
        self.model = model
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(timeout_s))
        self._voices = [
            VoiceInfo(f"{ENGINE_NAME}/{voice}", ENGINE_NAME, ("en-US",), PCM_SAMPLE_RATE_HZ)
            for voice in voices
        ]

    def voices(self) -> Sequence[VoiceInfo]:
        return self._voices

    async def synthesize(
        self, voice: VoiceInfo, text: str, options: SynthesisOptions
    ) -> AsyncIterator[bytes]:
        body: dict[str, object] = {
            "model": self.model,
            "input": text,
            "voice": voice.voice_id,
            "response_format": "pcm",
            "speed": options.speed,
        }
        if options.instructions:
            body["instructions"] = options.instructions
        url = f"{self.base_url}/audio/speech"
        try:
            async with self._client.stream("POST", url, json=body) as response:
                if response.status_code != httpx.codes.OK:
                    detail = (await response.aread()).decode("utf-8", "replace")[:500]
                    code = _STATUS_CODES.get(response.status_code, ErrorCode.UNAVAILABLE)
                    raise EngineError(
                        code, f"speech endpoint {url} answered {response.status_code}: {detail}"
                    )
                async for chunk in response.aiter_bytes():
                    if chunk:
                        yield chunk
        except httpx.TimeoutException as error:
            raise EngineError(
                ErrorCode.DEADLINE_EXCEEDED, f"speech endpoint {url} timed out: {error!r}"
            ) from error
        except httpx.HTTPError as error:
            raise EngineError(
                ErrorCode.UNAVAILABLE,
                f"cannot reach speech endpoint {url}: {error!r}; check VOXRELAY_OPENAI_BASE_URL",
            ) from error

    async def aclose(self) -> None:
        await self._client.aclose()
