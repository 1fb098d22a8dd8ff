"""G.711 and Ogg Opus output, decoded by libsndfile (an independent decoder) and
compared with the PCM the same request gives, over real gRPC."""

from __future__ import annotations

import asyncio
import io
import struct

import grpc
import numpy as np
import numpy.typing as npt
import pytest
import soundfile
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tests.conftest import (
    RunningServer,
    StartServer,
    audio_of,
    collect,
    config,
    read_rest,
    text,
    turn_done,
)
from voxrelay import AsyncClient, Audio, Client, SessionOptions, SynthesizedAudio, WireEncoding
from voxrelay.client import SampleType
from voxrelay.v1 import speech_pb2, speech_pb2_grpc
from voxrelay_server.codecs import OggOpusStream, linear_to_alaw, linear_to_ulaw
from voxrelay_server.engines.espeak_engine import EspeakEngine

G711 = {
    speech_pb2.AUDIO_ENCODING_MULAW: ("ULAW", linear_to_ulaw),
    speech_pb2.AUDIO_ENCODING_ALAW: ("ALAW", linear_to_alaw),
}
TEXT = "The first sentence of this turn is here. And then a second one follows it. "
"""Cut the same way on every call: each sentence is complete as it arrives (the space
after the last), so no words wait for the dry rule, whose timing varies from call to call."""
PAGE = struct.Struct("<4sBBqIIIB")


def g711_decode(data: bytes, subtype: str) -> npt.NDArray[np.int16]:
    """libsndfile's G.711 decoder, reading the codes as a headerless file."""
    samples, _ = soundfile.read(
        io.BytesIO(data), format="RAW", subtype=subtype, samplerate=8000, channels=1, dtype="int16"
    )
    decoded: npt.NDArray[np.int16] = samples
    return decoded


def snr_db(reference: npt.NDArray[np.float64], other: npt.NDArray[np.float64]) -> float:
    noise = reference - other
    return float(10 * np.log10(np.sum(reference**2) / max(np.sum(noise**2), 1e-12)))


def ogg_pages(data: bytes) -> list[tuple[int, int, int, int, bytes]]:
    """(header type, granule, serial, sequence, body) of every page; fails on a torn page."""
    pages = []
    start = 0
    while start < len(data):
        magic, version, kind, granule, serial, sequence, _, count = PAGE.unpack_from(data, start)
        assert magic == b"OggS" and version == 0
        table = start + PAGE.size
        start = table + count + sum(data[table : table + count])
        assert start <= len(data), "a page is cut short"
        pages.append((kind, granule, serial, sequence, data[table + count : start]))
    return pages


def check_opus_offsets(chunks: list[speech_pb2.AudioChunk], rate: int) -> int:
    """Each chunk's offset is where the previous chunks' pages end, in decoded samples
    (granule positions at 48 kHz, less the pre-skip of the OpusHead); the turn's length."""
    head = ogg_pages(chunks[0].data)[0][4]
    assert head[:8] == b"OpusHead"
    preskip = int.from_bytes(head[10:12], "little")
    position = 0
    for chunk in chunks:
        assert chunk.offset_samples == position
        granules = [g for _, g, *_ in ogg_pages(chunk.data) if g >= 0]
        if granules:
            position = max(position, (granules[-1] - preskip) // (48000 // rate))
    return position


async def speak(
    server: RunningServer,
    encoding: speech_pb2.AudioEncoding.ValueType,
    rate: int,
    *,
    turns: tuple[str, ...] = (TEXT,),
    voice: str = "",
    chunk_ms: int = 0,
) -> list[speech_pb2.AudioChunk]:
    audio_format = speech_pb2.AudioFormat(encoding=encoding, sample_rate_hz=rate)
    requests = [config(voice=voice, audio_format=audio_format, chunk_ms=chunk_ms)]
    for words in turns:
        requests += [text(words), turn_done()]
    async with grpc.aio.insecure_channel(server.target) as channel:
        return audio_of(await collect(speech_pb2_grpc.SpeechStub(channel), requests))


@pytest.mark.parametrize("encoding", list(G711))
@pytest.mark.parametrize("rate", [8000, 16000])
async def test_g711_decodes_to_the_pcm_within_its_quantization_error(
    tone_server: RunningServer, encoding: speech_pb2.AudioEncoding.ValueType, rate: int
) -> None:
    pcm_chunks = await speak(tone_server, speech_pb2.AUDIO_ENCODING_PCM_S16LE, rate)
    chunks = await speak(tone_server, encoding, rate, chunk_ms=40)
    assert {c.encoding for c in chunks} == {encoding}
    assert {c.sample_rate_hz for c in chunks} == {rate}
    pcm = np.frombuffer(b"".join(c.data for c in pcm_chunks), dtype="<i2").astype(np.float64)
    decoded = g711_decode(b"".join(c.data for c in chunks), G711[encoding][0]).astype(np.float64)
    assert decoded.shape == pcm.shape  # one byte per sample, nothing lost or added
    assert snr_db(pcm, decoded) > 35
    # One byte a sample: `chunk_ms` and `offset_samples` work as for PCM.
    offset = 0
    for chunk in chunks:
        assert chunk.offset_samples == offset
        offset += len(chunk.data)
    for segment in {c.segment for c in chunks}:
        sizes = [len(c.data) for c in chunks if c.segment == segment]
        assert set(sizes[:-1]) <= {rate * 40 // 1000} and sizes[-1] <= rate * 40 // 1000


@given(hnp.arrays(np.int16, st.integers(1, 2000)))
@settings(max_examples=200, deadline=None)
def test_mulaw_codes_decode_within_a_step_of_the_sample(samples: npt.NDArray[np.int16]) -> None:
    decoded = g711_decode(linear_to_ulaw(samples), "ULAW").astype(np.int64)
    magnitude = np.abs(samples.astype(np.int64))
    # A code covers a step of 1/16 of its biased magnitude (|x| + 132): half a step,
    # plus the clip at 32635.
    assert np.all(np.abs(decoded - samples) <= (magnitude + 132) / 32 + 1)


@given(hnp.arrays(np.int16, st.integers(1, 2000)))
@settings(max_examples=200, deadline=None)
def test_alaw_codes_decode_within_a_step_of_the_sample(samples: npt.NDArray[np.int16]) -> None:
    decoded = g711_decode(linear_to_alaw(samples), "ALAW").astype(np.int64)
    magnitude = np.abs(samples.astype(np.int64))
    assert np.all(np.abs(decoded - samples) <= magnitude / 32 + 16)


def test_g711_tables_are_the_standard_ones() -> None:
    # Reference points of ITU-T G.711: silence, the clip and the sign bit.
    silence = np.array([0, -1, 32767, -32768], dtype=np.int16)
    assert linear_to_ulaw(silence) == bytes([0xFF, 0x7F, 0x80, 0x00])
    assert linear_to_alaw(silence) == bytes([0xD5, 0x55, 0xAA, 0x2A])


def decode_opus(data: bytes) -> tuple[npt.NDArray[np.float64], int]:
    samples, rate = soundfile.read(io.BytesIO(data), dtype="float64")
    decoded: npt.NDArray[np.float64] = samples
    return decoded, int(rate)


def best_correlation(
    reference: npt.NDArray[np.float64], decoded: npt.NDArray[np.float64], max_lag: int
) -> float:
    """Highest correlation over small shifts: a codec may delay its output a little."""
    best = -1.0
    for lag in range(-max_lag, max_lag + 1):
        a = reference[max(0, lag) : len(reference) + min(0, lag)]
        b = decoded[max(0, -lag) : len(decoded) + min(0, -lag)]
        n = min(len(a), len(b))
        best = max(best, float(np.corrcoef(a[:n], b[:n])[0, 1]))
    return best


@pytest.mark.parametrize("rate", [8000, 12000, 16000, 24000, 48000])
async def test_opus_turn_decodes_as_one_stream_close_to_the_pcm(
    tone_server: RunningServer, rate: int
) -> None:
    # The tone voice: the same samples on every run (piper and espeak-ng vary a little
    # from run to run), so the PCM of one call is the reference for the other.
    pcm_chunks = await speak(tone_server, speech_pb2.AUDIO_ENCODING_PCM_S16LE, rate)
    chunks = await speak(tone_server, speech_pb2.AUDIO_ENCODING_OGG_OPUS, rate)
    assert {c.encoding for c in chunks} == {speech_pb2.AUDIO_ENCODING_OGG_OPUS}
    assert {c.sample_rate_hz for c in chunks} == {rate}
    assert len(chunks) > 2  # streamed, not one blob at the turn's end
    joined = b"".join(c.data for c in chunks)
    pages = ogg_pages(joined)  # every chunk holds whole pages: the join cuts none
    for chunk in chunks:
        ogg_pages(chunk.data)
    assert pages[0][0] & 0x02 and pages[-1][0] & 0x04  # begins and ends the stream
    assert len({page[2] for page in pages}) == 1
    assert [page[3] for page in pages] == list(range(len(pages)))
    pcm = np.frombuffer(b"".join(c.data for c in pcm_chunks), dtype="<i2") / 32767.0
    decoded, decoded_rate = decode_opus(joined)
    assert decoded_rate == rate
    assert len(decoded) == len(pcm)  # pre-skip and end padding trimmed exactly
    assert best_correlation(pcm, decoded, max_lag=3) > 0.95
    assert check_opus_offsets(chunks, rate) == len(pcm)


@pytest.mark.parametrize("rate", [8000, 16000, 24000, 48000])
async def test_opus_keeps_speech(
    start_server: StartServer, espeak_engine: EspeakEngine, rate: int
) -> None:
    """Real speech (espeak-ng's, taken from the server as PCM) through the encoder the
    server uses, fed in engine-sized pieces, decoded by libsndfile."""
    server = await start_server(extra_engines=[espeak_engine])
    chunks = await speak(server, speech_pb2.AUDIO_ENCODING_PCM_F32LE, rate, voice="espeak/en-us")
    speech = np.frombuffer(b"".join(c.data for c in chunks), dtype="<f4")
    stream = OggOpusStream(rate)
    pages = [c for i in range(0, speech.size, 4410) for c in stream.encode(speech[i : i + 4410])]
    pages += stream.close()
    decoded, _ = decode_opus(b"".join(c.data for c in pages))
    assert len(decoded) == speech.size == sum(c.samples for c in pages)
    assert best_correlation(speech.astype(np.float64), decoded, max_lag=3) > 0.95


async def test_each_turn_is_its_own_opus_stream_and_a_session_a_chain_of_them(
    tone_server: RunningServer,
) -> None:
    turns = ("One turn of speech here.", "And another turn after it.")
    chunks = await speak(tone_server, speech_pb2.AUDIO_ENCODING_OGG_OPUS, 16000, turns=turns)
    serials = []
    for turn in (1, 2):
        data = b"".join(c.data for c in chunks if c.turn == turn)
        pages = ogg_pages(data)
        assert pages[0][0] & 0x02 and pages[-1][0] & 0x04
        serials.append(pages[0][2])
        decoded, _ = decode_opus(data)
        assert len(decoded) == tone_server.tone.samples_for(turns[turn - 1])
        assert check_opus_offsets([c for c in chunks if c.turn == turn], 16000) == len(decoded)
    assert serials[0] != serials[1]  # a chain: each link has its own serial number
    whole = ogg_pages(b"".join(c.data for c in chunks))
    assert sum(1 for kind, *_ in whole if kind & 0x02) == 2


@pytest.mark.parametrize("rate", [22050, 44100, 96000])
async def test_an_opus_rate_opus_cannot_take_is_refused_with_the_rates_it_can(
    channel: grpc.aio.Channel, rate: int
) -> None:
    audio_format = speech_pb2.AudioFormat(
        encoding=speech_pb2.AUDIO_ENCODING_OGG_OPUS, sample_rate_hz=rate
    )
    call = speech_pb2_grpc.SpeechStub(channel).Stream(
        iter([config(audio_format=audio_format), text("Hello."), turn_done()])
    )
    responses = await read_rest(call)
    assert await call.code() == grpc.StatusCode.INVALID_ARGUMENT
    errors = [r.error for r in responses if r.WhichOneof("response") == "error"]
    message = errors[0].message
    assert f"sample_rate_hz {rate} is not an Opus rate" in message
    assert "use 8000, 12000, 16000, 24000 or 48000 Hz" in message


async def test_opus_without_a_rate_takes_the_lowest_opus_rate_above_the_voices(
    tone_server: RunningServer,
) -> None:
    chunks = await speak(tone_server, speech_pb2.AUDIO_ENCODING_OGG_OPUS, 0)
    assert {c.sample_rate_hz for c in chunks} == {16000}  # the tone voice's own rate


def test_opus_chunks_count_the_samples_their_pages_complete() -> None:
    rate = 24000
    stream = OggOpusStream(rate, chunk_samples=rate // 10)
    tone = (np.sin(np.arange(rate) * 2 * np.pi * 300 / rate) * 0.5).astype(np.float32)
    chunks = [c for i in range(0, rate, 1000) for c in stream.encode(tone[i : i + 1000])]
    chunks += stream.close()
    assert sum(c.samples for c in chunks) == rate
    assert all(c.samples >= rate // 10 for c in chunks[:-1])
    decoded, _ = decode_opus(b"".join(c.data for c in chunks))
    assert len(decoded) == rate


@pytest.mark.parametrize("encoding", ["mulaw", "alaw"])
@pytest.mark.parametrize("dtype", ["int16", "float32"])
async def test_the_client_decodes_g711_into_its_dtype_and_keeps_the_bytes(
    tone_server: RunningServer, encoding: WireEncoding, dtype: SampleType
) -> None:
    options = SessionOptions(encoding=encoding, dtype=dtype, sample_rate_hz=8000)
    async with AsyncClient(tone_server.target) as client:
        audio = await client.synthesize(TEXT, options)
    subtype = "ULAW" if encoding == "mulaw" else "ALAW"
    reference = g711_decode(audio.data, subtype)
    assert audio.samples.dtype == np.dtype(dtype) and audio.sample_rate_hz == 8000
    expected = reference if dtype == "int16" else reference / np.float32(32767)
    np.testing.assert_allclose(audio.samples, expected, rtol=1e-6)
    assert all(c.encoding == encoding and len(c.data) == c.num_samples for c in audio.chunks)


async def test_the_client_gives_opus_pages_their_sample_counts_and_decodes_a_turn(
    tone_server: RunningServer,
) -> None:
    options = SessionOptions(encoding="opus", dtype="float32")
    async with AsyncClient(tone_server.target) as client:
        events = []
        async with client.session(options) as session:
            for words in ("First turn here.", "Second turn, a bit longer than the first."):
                await session.send_text(words)
                await session.turn_done()
            await session.close()
            events = [event async for event in session if isinstance(event, Audio)]
        audio = await client.synthesize(TEXT, options)
        pcm = await client.synthesize(TEXT, SessionOptions())
    for turn, words in ((1, "First turn here."), (2, "Second turn, a bit longer than the first.")):
        pieces = [e for e in events if e.turn == turn]
        expected = tone_server.tone.samples_for(words)
        assert sum(e.num_samples for e in pieces) == expected
        assert all(e.samples.size == 0 and e.encoding == "opus" for e in pieces)
        decoded, _ = decode_opus(b"".join(e.data for e in pieces))
        assert len(decoded) == expected

    # The blocking client, too (on a thread: the server runs on this loop).
    def blocking_synthesize() -> SynthesizedAudio:
        with Client(tone_server.target) as blocking:
            return blocking.synthesize(TEXT, options)

    whole = await asyncio.to_thread(blocking_synthesize)
    for result in (audio, whole):
        assert result.data[:4] == b"OggS" and result.sample_rate_hz == 16000
        assert result.samples.dtype == np.float32
        assert len(result.samples) == len(pcm.samples)
        assert result.duration_s == pytest.approx(sum(c.duration_s for c in result.chunks))
