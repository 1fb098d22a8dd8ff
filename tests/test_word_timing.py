"""Word timing over real gRPC on loopback: `SessionConfig.word_timestamps`,
`StreamResponse.words`, `Voice.word_timestamps`, with the tone engine (exact timing)
and the real voices (espeak-ng, piper)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import voxrelay
from tests.conftest import (
    Request,
    Response,
    RunningServer,
    StartServer,
    audio_of,
    collect,
    config,
    read_one,
    read_rest,
    text,
    turn_done,
)
from voxrelay.v1 import speech_pb2
from voxrelay_server.dispatcher import SessionDispatcher
from voxrelay_server.engines.base import SynthesisOptions
from voxrelay_server.engines.espeak_engine import EspeakEngine
from voxrelay_server.engines.openai_engine import OpenAIEngine
from voxrelay_server.engines.piper_engine import PiperEngine
from voxrelay_server.engines.tone import SAMPLE_RATE_HZ, ToneEngine
from voxrelay_server.engines.words import spoken_words
from voxrelay_server.events import AudioOut, WordOut, WordsOut
from voxrelay_server.settings import AudioEncoding, OutputFormat

SENTENCES = speech_pb2.SEGMENTATION_SENTENCES
OPUS = speech_pb2.AUDIO_ENCODING_OGG_OPUS
TURNS = [
    ["Hello there, ", "my friend. ", "How are ", "you today? "],
    ['"Quoted," she said -- e.g. ', "the U.S. and 42 cats... ", "Well! "],
]


def turn_texts(requests: Sequence[Request]) -> dict[int, str]:
    """Each turn's text as sent, by number (turns end at `turn_done`)."""
    texts: dict[int, str] = {}
    turn = 1
    for request in requests:
        kind = request.WhichOneof("request")
        if kind == "text":
            texts[turn] = texts.get(turn, "") + request.text
        elif kind == "turn_done" and turn in texts:
            turn += 1
    return texts


def words_of(responses: Sequence[Response]) -> list[speech_pb2.WordTimings]:
    return [r.words for r in responses if r.WhichOneof("response") == "words"]


def check_words(
    responses: Sequence[Response], texts: dict[int, str], *, complete: bool = True
) -> dict[int, list[speech_pb2.Word]]:
    """The contract of `words`: each word once, in order, as in the text; monotonic;
    within the audio sent; before the audio message holding its first sample. With
    `complete`, every word of every segment's text is there. Returns the words by turn."""
    by_turn: dict[int, list[speech_pb2.Word]] = {}
    segment_words: dict[tuple[int, int], list[speech_pb2.Word]] = {}
    sent: dict[int, int] = {}  # samples of each turn's audio sent so far
    places: dict[tuple[int, int], tuple[int, int]] = {}
    for response in responses:
        kind = response.WhichOneof("response")
        if kind == "audio":
            chunk = response.audio
            places[chunk.turn, chunk.segment] = (chunk.text_offset, chunk.text_length)
            sent[chunk.turn] = chunk.offset_samples + samples_in(chunk)
        elif kind == "words":
            timings = response.words
            assert timings.words, "a words message lists at least one word"
            for word in timings.words:
                # Its first sample is not in audio already sent.
                assert word.start_samples >= sent.get(timings.turn, 0) or (
                    word.start_samples == word.end_samples
                )
            by_turn.setdefault(timings.turn, []).extend(timings.words)
            segment_words.setdefault((timings.turn, timings.segment), []).extend(timings.words)
    for turn, words in by_turn.items():
        turn_text = texts[turn]
        for word in words:
            assert turn_text[word.text_offset : word.text_offset + len(word.text)] == word.text
            assert word.start_samples <= word.end_samples
            # A word a failure or a cancel cut short may end past the audio sent.
            assert (word.end_samples if complete else word.start_samples) <= sent[turn]
        for before, after in itertools.pairwise(words):
            assert before.end_samples <= after.start_samples
            assert before.text_offset + len(before.text) <= after.text_offset
    if complete:
        for (turn, segment), (offset, length) in places.items():
            segment_text = texts[turn][offset : offset + length]
            expected = [(offset + a, segment_text[a:b]) for a, b in spoken_words(segment_text)]
            got = [(w.text_offset, w.text) for w in segment_words.get((turn, segment), [])]
            assert got == expected
    return by_turn


def samples_in(chunk: speech_pb2.AudioChunk) -> int:
    size = {
        speech_pb2.AUDIO_ENCODING_PCM_S16LE: 2,
        speech_pb2.AUDIO_ENCODING_PCM_F32LE: 4,
        speech_pb2.AUDIO_ENCODING_MULAW: 1,
        speech_pb2.AUDIO_ENCODING_ALAW: 1,
    }[chunk.encoding]
    return len(chunk.data) // size


def stream_requests(**fields: object) -> list[Request]:
    requests = [config(**fields)]
    for chunks in TURNS:
        requests += [*map(text, chunks), turn_done()]
    return requests


@pytest.mark.parametrize("chunk_ms", [0, 20, 300])
async def test_tone_sends_every_words_timing_before_its_audio(
    tone_server: RunningServer, channel: grpc.aio.Channel, chunk_ms: int
) -> None:
    requests = stream_requests(word_timestamps=True, chunk_ms=chunk_ms, min_sentence_chars=1)
    responses = await collect(tone_server.stub(channel), requests)
    by_turn = check_words(responses, turn_texts(requests))
    assert set(by_turn) == {1, 2}
    # The tone engine's timing is exact: a word lasts its characters' samples.
    per_char = SAMPLE_RATE_HZ * 10 // 1000
    for word in by_turn[1]:
        assert word.end_samples - word.start_samples == len(word.text) * per_char


async def test_without_word_timestamps_nothing_changes_on_the_wire(
    tone_server: RunningServer, channel: grpc.aio.Channel
) -> None:
    stub = tone_server.stub(channel)
    plain = await collect(stub, stream_requests(chunk_ms=20))
    timed = await collect(stub, stream_requests(chunk_ms=20, word_timestamps=True))
    assert not words_of(plain)
    assert words_of(timed)
    for responses in (plain, timed):  # each session has its own id
        assert responses[0].WhichOneof("response") == "session_started"
        responses[0].session_started.ClearField("session_id")
    assert [r for r in timed if r.WhichOneof("response") != "words"] == plain


@pytest.mark.parametrize(("rate", "speed"), [(48000, 1.0), (8000, 1.0), (16000, 2.0)])
async def test_resampling_and_speed_scale_the_timing(
    tone_server: RunningServer, channel: grpc.aio.Channel, rate: int, speed: float
) -> None:
    """Word timing is at the output rate and follows the speed: the tone engine's
    words land exactly where its audio says they are."""
    requests = stream_requests(
        word_timestamps=True,
        audio_format=speech_pb2.AudioFormat(sample_rate_hz=rate),
        speed=speed,
        min_sentence_chars=1,
    )
    responses = await collect(tone_server.stub(channel), requests)
    texts = turn_texts(requests)
    by_turn = check_words(responses, texts)
    native = {  # at 16 kHz and normal speed, from the text alone
        (w.text_offset): w
        for w in check_words(
            await collect(
                tone_server.stub(channel),
                stream_requests(word_timestamps=True, min_sentence_chars=1),
            ),
            texts,
        )[1]
    }
    scale = rate / SAMPLE_RATE_HZ / speed
    for word in by_turn[1]:
        reference = native[word.text_offset]
        assert abs(word.start_samples - reference.start_samples * scale) <= 2
        assert abs(word.end_samples - reference.end_samples * scale) <= 2


async def test_a_failed_segment_sends_no_timing_for_audio_never_sent(
    tone_server: RunningServer, channel: grpc.aio.Channel
) -> None:
    requests = [
        config(word_timestamps=True, segmentation=SENTENCES, min_sentence_chars=1, chunk_ms=20),
        text("First sentence is fine. "),
        text("Then this one [[fail]] breaks in the middle of it. "),
        turn_done(),
    ]
    call = tone_server.stub(channel).Stream(iter(requests))
    responses: list[Response] = []
    with pytest.raises(grpc.aio.AioRpcError):
        async for response in call:
            responses.append(response)
    assert responses[-2].WhichOneof("response") == "error"
    by_turn = check_words(responses, turn_texts(requests), complete=False)
    sent = sum(len(a.data) // 2 for a in audio_of(responses))
    assert all(w.start_samples < sent for w in by_turn[1])
    spoken = [w.text for w in by_turn[1]]
    assert spoken[:4] == ["First", "sentence", "is", "fine"]
    assert "middle" not in spoken  # its audio never went out


async def test_cancel_sends_no_timing_for_audio_never_sent(start_server: StartServer) -> None:
    """A turn spoken at real time, cancelled part-way: the words sent are those whose
    first sample was sent, and `spoken_text` ends at the last word played."""
    server = await start_server(realtime_factor=1.0)
    sentence = "This turn is long enough to be cut somewhere in its middle part. "
    turn_text = sentence * 3
    async with grpc.aio.insecure_channel(server.target) as channel:
        call = server.stub(channel).Stream()
        await call.write(config(word_timestamps=True, chunk_ms=20))
        await call.write(text(turn_text))
        await call.write(turn_done())
        received: list[Response] = []
        while sum(len(a.data) // 2 for a in audio_of(received)) < SAMPLE_RATE_HZ:
            received.append(await read_one(call))
        words = [w for timings in words_of(received) for w in timings.words]
        played = words[4].end_samples + 10  # the listener heard five words
        await call.write(Request(cancel=speech_pb2.Cancel(turn=1, played_samples=played)))
        await call.done_writing()
        received += await read_rest(call)
    by_turn = check_words(received, {1: turn_text}, complete=False)
    sent = sum(len(a.data) // 2 for a in audio_of(received))
    assert all(w.start_samples < sent for w in by_turn[1])
    assert len(by_turn[1]) < len(spoken_words(turn_text))
    ended = [r.lifecycle for r in received if r.WhichOneof("response") == "lifecycle"]
    assert ended[1].cancelled
    assert ended[1].spoken_text == turn_text[: by_turn[1][4].text_offset + len(by_turn[1][4].text)]


async def test_synthesize_sends_word_timing(
    tone_server: RunningServer, channel: grpc.aio.Channel
) -> None:
    whole = "One sentence here. And a second, with a clause! "
    call = tone_server.stub(channel).Synthesize(
        speech_pb2.SynthesizeRequest(
            config=speech_pb2.SessionConfig(word_timestamps=True), text=whole
        )
    )
    responses = [response async for response in call]
    by_turn = check_words(responses, {1: whole})
    assert [w.text for w in by_turn[1]] == [whole[a:b] for a, b in spoken_words(whole)]


async def test_list_voices_says_which_voices_give_word_timing(start_server: StartServer) -> None:
    openai = OpenAIEngine(base_url="http://127.0.0.1:9", voices=["alloy"])
    server = await start_server(extra_engines=[openai])
    async with voxrelay.AsyncClient(server.target) as client:
        voices = {voice.name: voice.word_timestamps for voice in await client.voices()}
    assert voices == {"tone/square": True, "openai/alloy": False}


async def test_espeak_word_timing_over_grpc(
    start_server: StartServer, espeak_engine: EspeakEngine
) -> None:
    server = await start_server(extra_engines=[espeak_engine])
    requests = stream_requests(
        voice="espeak/en-us",
        word_timestamps=True,
        audio_format=speech_pb2.AudioFormat(sample_rate_hz=16000),
        chunk_ms=40,
    )
    async with grpc.aio.insecure_channel(server.target) as channel:
        responses = await collect(server.stub(channel), requests)
    by_turn = check_words(responses, turn_texts(requests))
    assert all(w.end_samples > w.start_samples for w in by_turn[1])


async def test_piper_word_timing_over_grpc_and_the_client(
    start_server: StartServer, piper_engine: PiperEngine
) -> None:
    server = await start_server(extra_engines=[piper_engine])
    requests = stream_requests(voice="piper/en_US-joe-medium", word_timestamps=True)
    async with grpc.aio.insecure_channel(server.target) as channel:
        responses = await collect(server.stub(channel), requests)
    check_words(responses, turn_texts(requests))
    # The client library: `Words` events, and the words of a whole text.
    phrase = "Speak these words, then stop."
    options = voxrelay.SessionOptions(
        voice="piper/en_US-joe-medium", word_timestamps=True, encoding="opus"
    )
    async with voxrelay.AsyncClient(server.target) as client:
        audio = await client.synthesize(phrase, options)
    assert [w.text for w in audio.words] == ["Speak", "these", "words", "then", "stop"]
    assert all(phrase[w.text_offset : w.text_end] == w.text for w in audio.words)
    assert audio.words[-1].end_samples <= len(audio.samples)


async def test_ogg_opus_words_come_before_the_pages_of_their_first_sample(
    tone_server: RunningServer,
) -> None:
    options = voxrelay.SessionOptions(word_timestamps=True, encoding="opus", chunk_ms=20)
    turn_text = "".join(TURNS[0])
    events: list[voxrelay.Event] = []
    async with (
        voxrelay.AsyncClient(tone_server.target) as client,
        client.session(options) as session,
    ):
        for chunk in TURNS[0]:
            await session.send_text(chunk)
        await session.close()
        events = [event async for event in session]
    sent = 0
    words: list[voxrelay.Word] = []
    for event in events:
        if isinstance(event, voxrelay.Audio):
            sent = event.offset_samples + event.num_samples
        elif isinstance(event, voxrelay.Words):
            assert all(word.start_samples >= sent for word in event.words)
            words += event.words
    assert [w.text for w in words] == [turn_text[a:b] for a, b in spoken_words(turn_text)]
    assert words[-1].end_samples <= sent


@settings(max_examples=40, deadline=None)
@given(
    chunks=st.lists(
        st.text(alphabet=st.sampled_from(list("ab .,!?-'\n\"")), min_size=1, max_size=30),
        min_size=1,
        max_size=6,
    ),
    rate=st.sampled_from([8000, 16000, 22050]),
    chunk_ms=st.sampled_from([0, 20, 100]),
    speed=st.sampled_from([0.5, 1.0, 3.0]),
)
def test_the_dispatcher_keeps_the_word_contract_for_any_text(
    chunks: list[str], rate: int, chunk_ms: int, speed: float
) -> None:
    """Any text, rate, message size and speed: every word of every segment once, in
    order, as sent, monotonic, within the audio, before the audio of its first sample."""

    async def scenario() -> None:
        tone = ToneEngine(ms_per_char=2)
        voice = tone.voices()[0]
        options = SynthesisOptions(speed=speed)
        session = SessionDispatcher(
            lambda segment: tone.synthesize_words(voice, segment, options),
            native_rate_hz=SAMPLE_RATE_HZ,
            output=OutputFormat(AudioEncoding.PCM_S16LE, rate, chunk_ms),
            min_sentence_chars=1,
            max_inflight_segments=3,
            word_timestamps=True,
        )
        for chunk in chunks:
            session.send_text(chunk)
        session.close()
        events = [event async for event in session.events()]
        await session.aclose()
        sent = 0
        words: dict[int, list[WordOut]] = {}
        places: dict[int, tuple[int, int]] = {}
        for event in events:
            if isinstance(event, AudioOut):
                sent = event.offset_samples + len(event.data) // 2
                places[event.segment] = (event.text_offset, event.text_length)
            elif isinstance(event, WordsOut):
                assert all(w.start_samples >= sent for w in event.words)
                words.setdefault(event.segment, []).extend(event.words)
        turn_text = "".join(chunks)
        flat = [w for segment in sorted(words) for w in words[segment]]
        for before, after in itertools.pairwise(flat):
            assert before.end_samples <= after.start_samples
        assert all(w.end_samples <= sent for w in flat)
        for segment, (offset, length) in places.items():
            text_of = turn_text[offset : offset + length]
            expected = [(offset + a, text_of[a:b]) for a, b in spoken_words(text_of)]
            assert [(w.text_offset, w.text) for w in words.get(segment, [])] == expected

    asyncio.run(scenario())
