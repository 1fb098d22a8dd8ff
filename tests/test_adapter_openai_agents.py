"""openai-agents' own `VoicePipeline` speaking through voxrelay (voxrelay.adapters.openai_agents).

Each test runs a real `VoicePipeline` (openai-agents, installed by `make install`) whose
model provider is `VoxrelayVoiceModelProvider`, against a real voxrelay server on a
loopback port. The workflows are `VoiceWorkflowBase` subclasses that yield scripted
text: an LLM would need a network this suite does not have. Speech-to-text is a stub
(`ScriptedSTT`) for the same reason: the provider's default speech-to-text is OpenAI's
cloud endpoint, which voxrelay does not replace and the tests cannot reach.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncGenerator, AsyncIterator, Sequence

import grpc
import numpy as np
import pytest
from agents.voice import (
    AudioInput,
    OpenAIVoiceModelProvider,
    StreamedAudioInput,
    StreamedTranscriptionSession,
    STTModel,
    STTModelSettings,
    TTSModelSettings,
    VoiceModelProvider,
    VoicePipeline,
    VoicePipelineConfig,
    VoiceStreamEventAudio,
    VoiceStreamEventLifecycle,
    VoiceWorkflowBase,
)

import voxrelay
from tests.conftest import StartServer
from voxrelay.adapters.openai_agents import VoxrelayTTSModel, VoxrelayVoiceModelProvider
from voxrelay_server.engines.espeak_engine import EspeakEngine
from voxrelay_server.engines.piper_engine import PiperEngine
from voxrelay_server.engines.tone import SAMPLE_RATE_HZ as TONE_RATE_HZ

REPLY = (
    "Sure, the first sentence comes right away. The second one follows it closely! "
    "Is a third sentence too much? Not at all, and this is the end "
)


def tokens(text: str) -> list[str]:
    """`text` as an LLM streams it: each word with the whitespace after it."""
    words = text.split(" ")
    return [word + " " for word in words[:-1]] + ([words[-1]] if words[-1] else [])


class ScriptedWorkflow(VoiceWorkflowBase):
    """A workflow that answers every transcription with `reply`, token by token."""

    def __init__(self, reply: str) -> None:
        self.reply = reply
        self.heard: list[str] = []

    async def run(self, transcription: str) -> AsyncIterator[str]:
        self.heard.append(transcription)
        for token in tokens(self.reply):
            yield token


class ScriptedSession(StreamedTranscriptionSession):
    def __init__(self, turns: Sequence[str]) -> None:
        self.turns = list(turns)

    async def transcribe_turns(self) -> AsyncIterator[str]:
        for turn in self.turns:
            yield turn

    async def close(self) -> None:
        return None


class ScriptedSTT(STTModel):
    """Stands in for OpenAI's cloud transcription (unreachable here): every input is
    heard as the scripted turns."""

    def __init__(self, turns: Sequence[str] = ("hello",)) -> None:
        self.turns = list(turns)

    @property
    def model_name(self) -> str:
        return "scripted"

    async def transcribe(
        self,
        input: AudioInput,
        settings: STTModelSettings,
        trace_include_sensitive_data: bool,
        trace_include_sensitive_audio_data: bool,
    ) -> str:
        return self.turns[0]

    async def create_session(
        self,
        input: StreamedAudioInput,
        settings: STTModelSettings,
        trace_include_sensitive_data: bool,
        trace_include_sensitive_audio_data: bool,
    ) -> StreamedTranscriptionSession:
        return ScriptedSession(self.turns)


class ScriptedSTTProvider(VoiceModelProvider):
    """Speech-to-text only: what `VoxrelayVoiceModelProvider` delegates to."""

    def __init__(self, stt: ScriptedSTT) -> None:
        self.stt = stt
        self.asked: list[str | None] = []

    def get_stt_model(self, model_name: str | None) -> STTModel:
        self.asked.append(model_name)
        return self.stt

    def get_tts_model(self, model_name: str | None) -> VoxrelayTTSModel:
        raise AssertionError("the TTS model comes from voxrelay")


def silence() -> AudioInput:
    return AudioInput(buffer=np.zeros(2400, dtype=np.int16))


async def spoken(
    pipeline: VoicePipeline, audio_input: AudioInput | StreamedAudioInput
) -> tuple[list[np.ndarray], list[str]]:
    """The pipeline's audio events' data and its lifecycle events, in order."""
    result = await pipeline.run(audio_input)
    audio: list[np.ndarray] = []
    lifecycle: list[str] = []
    async for event in result.stream():
        if isinstance(event, VoiceStreamEventAudio):
            assert event.data is not None
            audio.append(np.asarray(event.data))
        elif isinstance(event, VoiceStreamEventLifecycle):
            lifecycle.append(event.event)
    return audio, lifecycle


def chunks_as_split(text_tokens: Sequence[str], settings: TTSModelSettings) -> list[str]:
    """The texts `StreamedAudioResult` hands `run()` for these tokens: what its
    `text_splitter` cuts as they arrive, then the rest at the end of the turn."""
    chunks, buffer = [], ""
    for token in text_tokens:
        buffer += token
        combined, buffer = settings.text_splitter(buffer)
        if combined:
            chunks.append(combined)
    if buffer:
        chunks.append(buffer)
    return chunks


async def test_a_voice_pipeline_speaks_through_voxrelay_in_order(
    start_server: StartServer,
) -> None:
    server = await start_server()
    stt = ScriptedSTTProvider(ScriptedSTT(["what can you do?"]))
    options = voxrelay.SessionOptions(sample_rate_hz=TONE_RATE_HZ)
    provider = VoxrelayVoiceModelProvider(server.target, stt_provider=stt, options=options)
    workflow = ScriptedWorkflow(REPLY)
    settings = TTSModelSettings(buffer_size=1)
    pipeline = VoicePipeline(
        workflow=workflow,
        config=VoicePipelineConfig(
            model_provider=provider, tts_settings=settings, tracing_disabled=True
        ),
    )

    audio, lifecycle = await spoken(pipeline, silence())

    assert workflow.heard == ["what can you do?"]
    assert stt.asked == [None]
    assert lifecycle == ["turn_started", "turn_ended", "session_ended"]
    # What voxrelay gives directly for each chunk the pipeline cut, in the same order.
    chunks = chunks_as_split(tokens(REPLY), settings)
    assert len(chunks) >= 3
    async with voxrelay.AsyncClient(server.target) as client:
        direct = [(await client.synthesize(chunk, options)).samples for chunk in chunks]
    np.testing.assert_array_equal(np.concatenate(audio), np.concatenate(direct))
    # The tone voice's amplitude names its segment's text: the chunks came in order.
    amplitudes = [int(np.abs(samples).max()) for samples in direct]
    heard = np.abs(np.concatenate(audio))
    assert len(set(amplitudes)) > 1
    position = 0
    for samples, amplitude in zip(direct, amplitudes, strict=True):
        assert heard[position : position + len(samples)].max() == amplitude
        position += len(samples)
    await provider.aclose()


async def test_settings_choose_the_voice_and_speed_of_a_real_voice(
    start_server: StartServer, espeak_engine: EspeakEngine
) -> None:
    """espeak-ng, named by the settings' custom voice id, at the settings' speed and
    24 kHz (OpenAI's rate, the default): as long as voxrelay makes it directly."""
    server = await start_server(extra_engines=[espeak_engine])
    text = "Speak this sentence a little faster than usual. "
    # One sentence: the splitter keeps it until the end of the turn, then `run()` gets
    # the whole buffer as it is.
    assert chunks_as_split(tokens(text), TTSModelSettings()) == [text]
    settings = TTSModelSettings(voice={"id": "espeak/en-us"}, speed=1.5, buffer_size=1)
    pipeline = VoicePipeline(
        workflow=ScriptedWorkflow(text),
        config=VoicePipelineConfig(
            model_provider=VoxrelayVoiceModelProvider(
                server.target, stt_provider=ScriptedSTTProvider(ScriptedSTT())
            ),
            tts_settings=settings,
            tracing_disabled=True,
        ),
    )

    audio, lifecycle = await spoken(pipeline, silence())

    assert lifecycle == ["turn_started", "turn_ended", "session_ended"]
    async with voxrelay.AsyncClient(server.target) as client:
        faster = await client.synthesize(
            text, voxrelay.SessionOptions("espeak/en-us", sample_rate_hz=24000, speed=1.5)
        )
        normal = await client.synthesize(
            text, voxrelay.SessionOptions("espeak/en-us", sample_rate_hz=24000)
        )
    assert faster.sample_rate_hz == 24000
    # espeak-ng's output varies by a few milliseconds from run to run.
    assert len(np.concatenate(audio)) == pytest.approx(len(faster.samples), rel=0.05)
    assert len(faster.samples) < 0.8 * len(normal.samples)


async def test_float32_settings_give_the_same_audio_scaled(start_server: StartServer) -> None:
    """`dtype` is the result's to apply: `run()` yields int16 whatever it is."""
    server = await start_server()
    options = voxrelay.SessionOptions(sample_rate_hz=TONE_RATE_HZ)
    model = VoxrelayTTSModel(server.target, options=options)
    text = "Twelve chars. "
    as_int16 = [chunk async for chunk in model.run(text, TTSModelSettings())]
    pipeline = VoicePipeline(
        workflow=ScriptedWorkflow(text),
        tts_model=model,
        stt_model=ScriptedSTT(),
        config=VoicePipelineConfig(
            tts_settings=TTSModelSettings(dtype=np.float32), tracing_disabled=True
        ),
    )
    audio, _ = await spoken(pipeline, silence())
    samples = np.frombuffer(b"".join(as_int16), dtype="<i2")
    floats = np.concatenate(audio).reshape(-1)
    assert floats.dtype == np.float32
    np.testing.assert_allclose(floats, samples.astype(np.float32) / 32767.0)
    await model.aclose()


async def test_every_turn_of_a_streamed_conversation_is_spoken(
    start_server: StartServer, piper_engine: PiperEngine
) -> None:
    """The real piper voice, a multi-turn `StreamedAudioInput` conversation: each turn's
    audio between its lifecycle events, as long as voxrelay makes it directly."""
    server = await start_server(extra_engines=[piper_engine])
    replies = ["Good morning to you. ", "It is sunny and warm today. "]

    class TwoReplies(VoiceWorkflowBase):
        def __init__(self) -> None:
            self.turn = 0

        async def run(self, transcription: str) -> AsyncIterator[str]:
            reply = replies[self.turn]
            self.turn += 1
            for token in tokens(reply):
                yield token

    provider = VoxrelayVoiceModelProvider(
        server.target, stt_provider=ScriptedSTTProvider(ScriptedSTT(["hi", "weather?"]))
    )
    pipeline = VoicePipeline(
        workflow=TwoReplies(),
        tts_model="piper/en_US-joe-medium",
        config=VoicePipelineConfig(model_provider=provider, tracing_disabled=True),
    )
    result = await pipeline.run(StreamedAudioInput())  # type: ignore[no-untyped-call]
    per_turn: list[int] = []
    events: list[str] = []
    async for event in result.stream():
        if isinstance(event, VoiceStreamEventAudio):
            assert event.data is not None
            per_turn[-1] += len(event.data)
        elif isinstance(event, VoiceStreamEventLifecycle):
            events.append(event.event)
            if event.event == "turn_started":
                per_turn.append(0)
    assert events == ["turn_started", "turn_ended"] * 2 + ["session_ended"]
    async with voxrelay.AsyncClient(server.target) as client:
        for reply, samples in zip(replies, per_turn, strict=True):
            direct = await client.synthesize(
                reply.strip(),
                voxrelay.SessionOptions("piper/en_US-joe-medium", sample_rate_hz=24000),
            )
            # piper's noise makes each run's length differ a little.
            assert samples == pytest.approx(len(direct.samples), rel=0.2)
    await provider.aclose()  # the model made for the voice too


async def test_a_run_left_early_stops_the_synthesis_behind_it(start_server: StartServer) -> None:
    """`StreamedAudioResult` cancels its runs' tasks when its stream ends early: the
    abandoned `run()` cancels its `Synthesize` call, and the server stops making audio."""
    server = await start_server(realtime_factor=1.0)  # 3 s of audio, made in 3 s
    model = VoxrelayTTSModel(server.target)
    run = model.run("A long sentence that takes three seconds to say " * 6, TTSModelSettings())
    assert isinstance(run, AsyncGenerator)
    first = await anext(run)
    assert first and server.tone.stats.active == 1
    await run.aclose()
    await asyncio.wait_for(server.tone.idle.wait(), 5)
    assert (server.tone.stats.cancelled, server.tone.stats.finished) == (1, 0)
    await model.aclose()


async def test_a_refused_setting_fails_the_pipeline_with_the_servers_status(
    start_server: StartServer,
) -> None:
    server = await start_server()
    pipeline = VoicePipeline(
        workflow=ScriptedWorkflow("Too fast to speak. "),
        config=VoicePipelineConfig(
            model_provider=VoxrelayVoiceModelProvider(
                server.target, stt_provider=ScriptedSTTProvider(ScriptedSTT())
            ),
            tts_settings=TTSModelSettings(speed=9.0),
            tracing_disabled=True,
        ),
    )
    with pytest.raises(voxrelay.VoxrelayError) as failure:
        await spoken(pipeline, silence())
    assert failure.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert "speed" in failure.value.message


def test_openai_voice_names_map_or_go_to_the_openai_engine() -> None:
    model = VoxrelayTTSModel("127.0.0.1:1", voices={"alloy": "piper/en_US-joe-medium"})
    voice = model.options_for
    assert voice(TTSModelSettings(voice="alloy")).voice == "piper/en_US-joe-medium"
    assert voice(TTSModelSettings(voice="nova")).voice == "openai/nova"
    assert voice(TTSModelSettings(voice={"id": "espeak/de"})).voice == "espeak/de"
    assert voice(TTSModelSettings()).voice == ""
    assert voice(TTSModelSettings()).sample_rate_hz == 24000
    assert voice(TTSModelSettings(instructions="calmly")).instructions == "calmly"


def test_speech_to_text_is_openais_unless_another_provider_is_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # No request is made: the model is only built (a key is needed to build it).
    monkeypatch.setenv("OPENAI_API_KEY", "sk-not-used")
    stt = VoxrelayVoiceModelProvider("127.0.0.1:1").get_stt_model(None)
    expected = OpenAIVoiceModelProvider().get_stt_model(None)
    assert type(stt) is type(expected)
    assert stt.model_name == expected.model_name


def test_the_client_imports_without_any_framework() -> None:
    frameworks = ("agents", "pipecat", "livekit")
    blocked = f"import sys\nfor name in {frameworks!r}:\n    sys.modules[name] = None\n"
    ok = subprocess.run(
        [sys.executable, "-c", blocked + "import voxrelay, voxrelay.adapters, voxrelay.cli"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    missing = subprocess.run(
        [sys.executable, "-c", blocked + "import voxrelay.adapters.openai_agents"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert "ModuleNotFoundError" in missing.stderr or "ImportError" in missing.stderr
