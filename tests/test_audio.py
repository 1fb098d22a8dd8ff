"""Engine PCM to caller audio: alignment, dtype scaling, chunking, resampling."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from voxrelay_server.audio import (
    MAX_MESSAGE_BYTES,
    MAX_MESSAGE_S,
    SampleAligner,
    SegmentEncoder,
    max_message_bytes,
)
from voxrelay_server.settings import AudioEncoding, OutputFormat

RATE = 16000
SAMPLE_ENCODINGS = [e for e in AudioEncoding if e.bytes_per_sample]
"""Encodings made per segment, sample by sample (Ogg Opus is made per turn)."""


def ramp(count: int) -> np.ndarray:
    return (np.arange(count, dtype=np.int64) * 37 % 60000 - 30000).astype("<i2")


def encode_all(encoder: SegmentEncoder, chunks: list[bytes]) -> list[bytes]:
    messages = [m for chunk in chunks for m in encoder.push(chunk)]
    return messages + encoder.finish()


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    edges = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


def test_odd_byte_counts_never_misalign_samples() -> None:
    pcm = ramp(1000).tobytes()
    odd_chunks = split_at(pcm, [1, 4, 7, 500, 1001, 1999])
    assert any(len(chunk) % 2 for chunk in odd_chunks)
    encoder = SegmentEncoder(RATE, OutputFormat(AudioEncoding.PCM_S16LE, RATE))
    messages = encode_all(encoder, odd_chunks)
    assert all(len(m) % 2 == 0 for m in messages)
    assert b"".join(messages) == pcm


def test_aligner_carries_the_odd_byte() -> None:
    aligner = SampleAligner()
    assert aligner.push(b"\x01").size == 0
    assert aligner.has_partial_sample
    assert aligner.push(b"\x02\x03\x04").tolist() == [0x0201, 0x0403]
    assert not aligner.has_partial_sample


def test_int16_passes_through_unchanged() -> None:
    pcm = ramp(4000).tobytes()
    encoder = SegmentEncoder(RATE, OutputFormat(AudioEncoding.PCM_S16LE, RATE))
    assert b"".join(encode_all(encoder, [pcm])) == pcm


def test_float32_is_int16_divided_by_32767() -> None:
    samples = np.array([-32768, -32767, -1, 0, 1, 16384, 32767], dtype="<i2")
    encoder = SegmentEncoder(RATE, OutputFormat(AudioEncoding.PCM_F32LE, RATE))
    data = b"".join(encode_all(encoder, [samples.tobytes()]))
    floats = np.frombuffer(data, dtype="<f4")
    assert floats.shape == samples.shape
    np.testing.assert_allclose(floats, samples.astype(np.float64) / 32767.0, rtol=1e-6)
    assert floats[-1] == 1.0


@pytest.mark.parametrize("encoding", SAMPLE_ENCODINGS)
def test_chunk_ms_cuts_messages_of_that_duration(encoding: AudioEncoding) -> None:
    encoder = SegmentEncoder(RATE, OutputFormat(encoding, RATE, chunk_ms=50))
    chunks = split_at(ramp(RATE).tobytes(), [333, 3001, 9999])  # 1 s of audio, ragged pieces
    messages = encode_all(encoder, chunks)
    samples_per_message = [len(m) // encoding.bytes_per_sample for m in messages]
    assert samples_per_message == [800] * 20


def test_chunk_ms_sends_a_short_last_message() -> None:
    encoder = SegmentEncoder(RATE, OutputFormat(AudioEncoding.PCM_S16LE, RATE, chunk_ms=100))
    messages = encode_all(encoder, [ramp(4000).tobytes()])
    assert [len(m) // 2 for m in messages] == [1600, 1600, 800]


def test_without_chunk_ms_audio_goes_out_as_produced() -> None:
    encoder = SegmentEncoder(RATE, OutputFormat(AudioEncoding.PCM_S16LE, RATE))
    assert [len(m) for m in encoder.push(ramp(10).tobytes())] == [20]
    assert [len(m) for m in encoder.push(ramp(3).tobytes())] == [6]


@pytest.mark.parametrize(("source", "target"), [(22050, 48000), (22050, 16000), (16000, 8000)])
@pytest.mark.parametrize("encoding", SAMPLE_ENCODINGS)
def test_resampling_yields_the_length_of_the_new_rate(
    source: int, target: int, encoding: AudioEncoding
) -> None:
    seconds = 1.5
    count = int(source * seconds)
    tone = (np.sin(2 * np.pi * 440 * np.arange(count) / source) * 20000).astype("<i2")
    encoder = SegmentEncoder(source, OutputFormat(encoding, target))
    chunks = split_at(tone.tobytes(), [1001, 5003, 20001])
    produced = sum(len(m) for m in encode_all(encoder, chunks)) // encoding.bytes_per_sample
    assert abs(produced - count * target / source) <= 2


def test_resampling_keeps_the_signal_and_its_pitch() -> None:
    source, target = 22050, 48000
    t = np.arange(source) / source
    tone = (np.sin(2 * np.pi * 440 * t) * 16000).astype("<i2")
    encoder = SegmentEncoder(source, OutputFormat(AudioEncoding.PCM_F32LE, target))
    out = np.frombuffer(b"".join(encode_all(encoder, [tone.tobytes()])), dtype="<f4")
    spectrum = np.abs(np.fft.rfft(out))
    peak_hz = np.argmax(spectrum) * target / len(out)
    assert abs(peak_hz - 440) < 3
    rms_in = np.sqrt(np.mean((tone / 32767.0) ** 2))
    rms_out = np.sqrt(np.mean(out.astype(np.float64) ** 2))
    assert rms_out == pytest.approx(rms_in, rel=0.02)


@pytest.mark.parametrize("encoding", SAMPLE_ENCODINGS)
@pytest.mark.parametrize("rate", [8000, RATE, 96000])
def test_huge_engine_chunks_are_cut_into_messages_of_at_most_a_second(
    encoding: AudioEncoding, rate: int
) -> None:
    pcm = ramp(5 * MAX_MESSAGE_BYTES // 2 + 7).tobytes()  # several limits' worth of samples
    output = OutputFormat(encoding, rate)
    encoder = SegmentEncoder(RATE, output)
    messages = encode_all(encoder, [pcm])
    limit = max_message_bytes(output)
    assert limit <= min(MAX_MESSAGE_BYTES, rate * encoding.bytes_per_sample * MAX_MESSAGE_S)
    assert len(messages) > 1
    assert all(len(m) <= limit for m in messages)
    assert max(len(m) for m in messages) == limit
    assert all(len(m) % encoding.bytes_per_sample == 0 for m in messages)
    total = sum(len(m) for m in messages) // encoding.bytes_per_sample
    assert total == pytest.approx(len(pcm) // 2 * rate / RATE, abs=2)
