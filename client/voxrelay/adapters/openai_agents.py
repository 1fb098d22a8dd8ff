"""openai-agents' `VoicePipeline` speaking through voxrelay.

Installed with `pip install 'voxrelay[openai-agents]'`:

    from agents.voice import VoicePipeline, VoicePipelineConfig
    from voxrelay.adapters.openai_agents import VoxrelayVoiceModelProvider

    pipeline = VoicePipeline(
        workflow=my_workflow,
        config=VoicePipelineConfig(model_provider=VoxrelayVoiceModelProvider("127.0.0.1:50051")),
    )

`VoxrelayTTSModel` is openai-agents' `TTSModel`: `StreamedAudioResult` calls its
`run(text, settings)` once per chunk of complete sentences its `text_splitter` cut
from the workflow's text (and once for the rest at the end of a turn), all of a
turn's chunks at once, each in a task of its own, and plays their audio in the order
of the chunks. Each `run()` is one `Synthesize` call: a chunk is a whole text known
up front, which is what that rpc is for, and a call of its own keeps every `run()`
independent of the others. A `Stream` session kept across runs would put every
conversation that shares the pipeline's model (one `TTSModel` per `VoicePipeline`)
into one ordered stream, where one caller's reply waits behind another's, and
`run()` is told nothing about which conversation it speaks for. The cost is one
session opening per chunk (BENCHMARKS.md measures the first audio with it). A
`run()` whose iteration is abandoned (the result's tasks are cancelled when its
`stream()` ends early) cancels its call, which stops the synthesis behind it.

`VoxrelayVoiceModelProvider` hands out that model for text-to-speech and delegates
speech-to-text, which voxrelay does not do, to another provider (OpenAI's by
default, created only when a speech-to-text model is first asked for).

This module imports `agents` (openai-agents); the rest of the client does not.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Mapping

from agents.voice import STTModel, TTSModel, TTSModelSettings, VoiceModelProvider

from voxrelay.client import AsyncClient, SessionOptions
from voxrelay.events import Audio

OPENAI_PCM_RATE_HZ = 24000
"""The rate of OpenAI's `pcm` speech, which `VoicePipeline` users play its audio at:
`StreamedAudioResult` passes on bytes without a rate, so the model asks voxrelay
for this one (the server resamples) unless told otherwise."""


class VoxrelayTTSModel(TTSModel):
    """An openai-agents `TTSModel` whose audio comes from a voxrelay server.

    `run()` yields 16-bit PCM (mono, at `options.sample_rate_hz`, 24000 Hz by
    default, as OpenAI's `pcm` speech), one piece per voxrelay audio message
    (`options.chunk_ms` sizes them; 0 = as the engine makes them).

    `TTSModelSettings` map onto the session's options as far as they can:

    - `voice`: a voxrelay voice name (`piper/en_US-joe-medium`), given as the
      setting's string or as a custom voice's `{"id": ...}`; an OpenAI voice name
      (`alloy`, ...) goes through `voices` when it maps it, else is spoken by
      voxrelay's `openai/<name>` voice. None keeps `options.voice` (empty: the
      server's default voice). An unknown voice fails the run with INVALID_ARGUMENT
      (a `VoxrelayError` naming the voices meant).
    - `speed`: the session's speed (0.25 to 4.0; other values fail the run with
      INVALID_ARGUMENT); None keeps `options.speed`.
    - `instructions`: the session's instructions (the `openai` engine follows them;
      piper and espeak ignore them).
    - `dtype` and `transform_data`: applied by `StreamedAudioResult` to the 16-bit
      PCM `run()` yields (it reads every chunk as int16), so `run()` always asks
      for int16 whatever `options.dtype` says.
    - `buffer_size` and `text_splitter`: applied by `StreamedAudioResult` (how many
      of `run()`'s pieces make one audio event; how the text is cut into the chunks
      `run()` gets); the server does not see them. voxrelay cuts each chunk into
      segments again and streams the first one's audio as it is made.

    `client` is used when given (and not closed here); otherwise the model opens
    its own channel to `target` (`VOXRELAY_SERVER`, else 127.0.0.1:50051) with
    `tls_ca` and `token` on first use, one per event loop, and `aclose()` closes it.
    """

    def __init__(
        self,
        target: str | None = None,
        *,
        client: AsyncClient | None = None,
        options: SessionOptions | None = None,
        voices: Mapping[str, str] | None = None,
        tls_ca: str | None = None,
        token: str | None = None,
        model_name: str = "voxrelay",
    ) -> None:
        self._target = target
        self._given_client = client
        self._tls_ca = tls_ca
        self._token = token
        base = options or SessionOptions(sample_rate_hz=OPENAI_PCM_RATE_HZ)
        self.options = dataclasses.replace(base, dtype="int16", encoding="pcm")
        """The session options every run starts from (int16 PCM whatever was given)."""
        self.voices = dict(voices or {})
        """OpenAI voice names (`alloy`, ...) to voxrelay voice names."""
        self._model_name = model_name
        self._clients: dict[asyncio.AbstractEventLoop, AsyncClient] = {}

    @property
    def model_name(self) -> str:
        """The name openai-agents' traces show for this model."""
        return self._model_name

    def options_for(self, settings: TTSModelSettings) -> SessionOptions:
        """The session options of one run: `options` with `settings` applied."""
        base = self.options
        return dataclasses.replace(
            base,
            voice=self._voice(settings.voice) or base.voice,
            speed=float(settings.speed) if settings.speed is not None else base.speed,
            instructions=settings.instructions or base.instructions,
        )

    def _voice(self, voice: object) -> str | None:
        if voice is None:
            return None
        if isinstance(voice, Mapping):
            return str(voice["id"])
        name = str(voice)
        if name in self.voices:
            return self.voices[name]
        return name if "/" in name else f"openai/{name}"

    def _client(self) -> AsyncClient:
        if self._given_client is not None:
            return self._given_client
        # A grpc.aio channel belongs to the loop it was first used on.
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            client = AsyncClient(self._target, tls_ca=self._tls_ca, token=self._token)
            self._clients[loop] = client
        return client

    async def run(self, text: str, settings: TTSModelSettings) -> AsyncIterator[bytes]:
        """The audio of `text` as 16-bit PCM, piece by piece as voxrelay sends it.

        Raises `VoxrelayError` (with the server's status and message) when the
        server refuses the text or the options, or cannot be reached.
        """
        options = self.options_for(settings)
        async for event in self._client().synthesize_events(text, options):
            if isinstance(event, Audio):
                yield event.data

    async def aclose(self) -> None:
        """Close the channels this model opened (not a `client` it was given)."""
        clients, self._clients = self._clients, {}
        for client in clients.values():
            await client.close()


class VoxrelayVoiceModelProvider(VoiceModelProvider):
    """An openai-agents `VoiceModelProvider`: text-to-speech from voxrelay,
    speech-to-text from `stt_provider`.

    `get_tts_model(name)` gives `tts` (built from `target` and the keywords, as
    `VoxrelayTTSModel` takes them, when not given); a `name`
    (`VoicePipeline(tts_model="piper/en_US-joe-medium")`) is a voxrelay voice, and
    gives a model of the same server speaking with that voice.
    `get_stt_model(name)` is `stt_provider.get_stt_model(name)`; without
    `stt_provider` it is OpenAI's (`OpenAIVoiceModelProvider()`, which needs an
    OpenAI API key), made on first use, so a pipeline given its own `stt_model`
    never needs one.
    """

    def __init__(
        self,
        target: str | None = None,
        *,
        stt_provider: VoiceModelProvider | None = None,
        tts: VoxrelayTTSModel | None = None,
        client: AsyncClient | None = None,
        options: SessionOptions | None = None,
        voices: Mapping[str, str] | None = None,
        tls_ca: str | None = None,
        token: str | None = None,
    ) -> None:
        self._stt_provider = stt_provider
        self.tts = tts or VoxrelayTTSModel(
            target, client=client, options=options, voices=voices, tls_ca=tls_ca, token=token
        )
        """The model `get_tts_model(None)` gives."""
        self._by_voice: dict[str, VoxrelayTTSModel] = {}

    async def aclose(self) -> None:
        """Close the channels of `tts` and of every model `get_tts_model` made."""
        for model in (self.tts, *self._by_voice.values()):
            await model.aclose()

    def get_stt_model(self, model_name: str | None) -> STTModel:
        """The speech-to-text model of `stt_provider` (OpenAI's when none was given)."""
        if self._stt_provider is None:
            from agents.voice import OpenAIVoiceModelProvider

            self._stt_provider = OpenAIVoiceModelProvider()
        return self._stt_provider.get_stt_model(model_name)

    def get_tts_model(self, model_name: str | None) -> TTSModel:
        """`tts`, or with `model_name` a model speaking with that voxrelay voice."""
        if not model_name:
            return self.tts
        model = self._by_voice.get(model_name)
        if model is None:
            base = self.tts
            model = VoxrelayTTSModel(
                base._target,
                client=base._given_client,
                options=dataclasses.replace(base.options, voice=model_name),
                voices=base.voices,
                tls_ca=base._tls_ca,
                token=base._token,
                model_name=model_name,
            )
            self._by_voice[model_name] = model
        return model
