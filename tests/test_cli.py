"""The `voxrelay` command as a user runs it: real subprocesses, a real server, real WAV files.

One `voxrelay serve` process (the default engines: piper and espeak) serves the
whole module on a free loopback port; `voxrelay say` and `voxrelay voices` run
against it as separate processes, and their files and messages are checked.
"""

from __future__ import annotations

import re
import signal
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import soundfile

from tests.processes import (
    VOXRELAY,
    ServeProcess,
    free_port,
    start_serve,
    user_env,
    wait_until_answering,
)

DEFAULT_VOICE = "piper/en_US-joe-medium"
HELLO = "Hello there. How are you today?"
NATIVE_RATE_HZ = 22050
STOP_TIMEOUT_S = 30.0
RUN_TIMEOUT_S = 60.0

pytestmark = pytest.mark.timeout(120)


@contextmanager
def serving(
    args: Sequence[str], target: str, log: Path, env: Mapping[str, str]
) -> Iterator[ServeProcess]:
    """Run `voxrelay serve ARGS` until the block ends; then SIGTERM it and expect exit 0."""
    process = start_serve(args, log, env)
    try:
        wait_until_answering(process, target, log)
        yield ServeProcess(process, target, log)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
    assert code == 0, f"voxrelay serve exited with {code} on SIGTERM:\n{log.read_text()}"
    assert "stopped" in log.read_text()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """`voxrelay serve --listen 127.0.0.1:<free port>`, shared by the module's tests."""
    target = f"127.0.0.1:{free_port()}"
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with serving(["--listen", target], target, log, user_env()) as running:
        yield running


def voxrelay(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run `voxrelay ARGS` to completion, capturing its output."""
    return subprocess.run(
        [str(VOXRELAY), *args],
        cwd=cwd,
        env=user_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )


def rms(samples: npt.NDArray[np.float64]) -> float:
    return float(np.sqrt(np.mean(np.square(samples)))) if len(samples) else 0.0


def assert_plausible_duration(duration_s: float, words: str) -> None:
    """Speech lasts roughly 30 to 200 ms per character."""
    low, high = len(words) * 0.03, len(words) * 0.2
    assert low < duration_s < high, (
        f"{duration_s:.2f} s of audio for {len(words)} characters, expected {low:.2f} to {high:.2f}"
    )


def read_stderr_until(process: subprocess.Popen[str], marker: str) -> str:
    """Read the process's stderr line by line until a line contains `marker`."""
    assert process.stderr is not None
    seen = ""
    while marker not in seen:
        line = process.stderr.readline()
        if not line:
            raise AssertionError(f"stderr ended before {marker!r}:\n{seen}")
        seen += line
    return seen


def test_say_writes_a_wav_file_and_reports_timing(server: ServeProcess, tmp_path: Path) -> None:
    output = tmp_path / "hello.wav"

    result = voxrelay("say", HELLO, "-o", str(output), "--server", server.target, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    info = soundfile.info(str(output))
    assert (info.format, info.subtype) == ("WAV", "PCM_16")
    assert info.samplerate == NATIVE_RATE_HZ
    assert info.channels == 1
    samples, rate = soundfile.read(str(output), dtype="float64")
    duration_s = len(samples) / rate
    assert rms(samples) > 0.01
    assert_plausible_duration(duration_s, HELLO)

    first = re.search(r"first audio after (\d+) ms \((\d+) Hz\)", result.stderr)
    assert first is not None, result.stderr
    assert int(first.group(2)) == NATIVE_RATE_HZ
    # The session's id (which the server's logs carry), voice and format come first.
    started = re.search(r"session ([0-9a-f]{12}): (\S+), pcm at (\d+) Hz", result.stderr)
    assert started is not None, result.stderr
    assert int(started.group(3)) == NATIVE_RATE_HZ
    assert result.stderr.index("session ") < result.stderr.index("first audio")
    summary = re.search(
        r"wrote \S*hello\.wav \((\d+\.\d+) s of audio\) in (\d+\.\d+) s: "
        r"real-time factor (\d+\.\d+), first audio (\d+) ms",
        result.stderr,
    )
    assert summary is not None, result.stderr
    audio_s, total_s, factor = (float(summary.group(i)) for i in (1, 2, 3))
    assert audio_s == pytest.approx(duration_s, abs=0.01)
    assert factor == pytest.approx(total_s / audio_s, abs=0.02)
    assert 0 < factor < 10
    assert int(summary.group(4)) == int(first.group(1))
    assert int(first.group(1)) <= total_s * 1000 + 1


def test_say_writes_float_audio_at_the_rate_asked_for(server: ServeProcess, tmp_path: Path) -> None:
    output = tmp_path / "hello-f32.wav"

    result = voxrelay(
        "say",
        HELLO,
        "-o",
        str(output),
        "--server",
        server.target,
        "--format",
        "f32",
        "--sample-rate",
        "48000",
        cwd=tmp_path,
    )

    assert result.returncode == 0, result.stderr
    info = soundfile.info(str(output))
    assert (info.format, info.subtype) == ("WAV", "FLOAT")
    assert info.samplerate == 48000
    assert info.channels == 1
    samples, rate = soundfile.read(str(output), dtype="float64")
    assert rms(samples) > 0.01
    assert np.max(np.abs(samples)) <= 1.0
    assert_plausible_duration(len(samples) / rate, HELLO)
    assert "(48000 Hz)" in result.stderr


def reported_audio_s(stderr: str, name: str) -> float:
    summary = re.search(rf"wrote \S*{re.escape(name)} \((\d+\.\d+) s of audio\)", stderr)
    assert summary is not None, stderr
    return float(summary.group(1))


@pytest.mark.parametrize(("name", "subtype"), [("mulaw", "ULAW"), ("alaw", "ALAW")])
def test_say_writes_g711_wav_files_players_open(
    server: ServeProcess, tmp_path: Path, name: str, subtype: str
) -> None:
    output = tmp_path / f"hello-{name}.wav"
    args = ["-o", str(output), "--format", name, "--sample-rate", "8000"]
    result = voxrelay("say", HELLO, *args, "--server", server.target, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    info = soundfile.info(str(output))
    assert (info.format, info.subtype, info.samplerate, info.channels) == ("WAV", subtype, 8000, 1)
    samples, rate = soundfile.read(str(output), dtype="float64")
    assert len(samples) == info.frames == output.stat().st_size - 58 - len(samples) % 2
    assert rms(samples) > 0.01
    assert_plausible_duration(len(samples) / rate, HELLO)
    assert reported_audio_s(result.stderr, output.name) == pytest.approx(
        len(samples) / rate, abs=0.01
    )


def test_say_writes_an_ogg_opus_file_players_open(server: ServeProcess, tmp_path: Path) -> None:
    result = voxrelay("say", HELLO, "--format", "opus", "--server", server.target, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    output = tmp_path / "voxrelay.opus"  # the default name for opus
    info = soundfile.info(str(output))
    assert (info.format, info.subtype, info.channels) == ("OGG", "OPUS", 1)
    assert info.samplerate == 24000  # the Opus rate at or above the voice's 22050 Hz
    samples, rate = soundfile.read(str(output), dtype="float64")
    assert len(samples) == info.frames
    assert rms(samples) > 0.01
    assert_plausible_duration(len(samples) / rate, HELLO)
    assert reported_audio_s(result.stderr, output.name) == pytest.approx(
        len(samples) / rate, abs=0.01
    )
    assert "(24000 Hz)" in result.stderr


def test_say_streams_stdin_line_by_line(server: ServeProcess, tmp_path: Path) -> None:
    first_line = "Hello there, this is the first line."
    second_line = "And this second line adds a good deal more speech to the very same turn."
    alone = tmp_path / "first.wav"
    result = voxrelay("say", first_line, "-o", str(alone), "--server", server.target, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    first_alone_s = soundfile.info(str(alone)).duration
    output = tmp_path / "out.wav"

    process = subprocess.Popen(
        [str(VOXRELAY), "say", "-", "-o", str(output), "--server", server.target],
        cwd=tmp_path,
        env=user_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdin is not None and process.stderr is not None
        process.stdin.write(first_line + "\n")
        process.stdin.flush()
        # The first line is spoken while stdin is still open: the command streams.
        before_second = read_stderr_until(process, "first audio after")
        assert "turn 1 started" in before_second
        process.stdin.write(second_line + "\n")
        process.stdin.close()
        rest = process.stderr.read()
        code = process.wait(timeout=RUN_TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert code == 0, before_second + rest
    assert "turn 1 ended" in rest
    assert "turn 2" not in rest  # lines without a turn marker make one turn
    samples, rate = soundfile.read(str(output), dtype="float64")
    assert rms(samples) > 0.01
    assert len(samples) / rate > first_alone_s + 1.0


def test_voices_lists_the_default_first_and_espeak_voices(
    server: ServeProcess, tmp_path: Path
) -> None:
    result = voxrelay("voices", "--server", server.target, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["VOICE", "ENGINE", "RATE", "LANGUAGES"]
    assert rows[0].split() == [DEFAULT_VOICE, "piper", "22050", "en-US", "(default)"]
    assert sum("(default)" in row for row in rows) == 1
    by_name = {row.split()[0]: row.split() for row in rows}
    assert by_name["espeak/en-us"][1:4] == ["espeak", "22050", "en-US"]
    assert "espeak/de" in by_name
    assert sum(name.startswith("espeak/") for name in by_name) > 50
    assert not any(name.startswith("tone/") for name in by_name)  # for tests, off by default


def test_the_test_engine_is_not_offered_by_default(server: ServeProcess, tmp_path: Path) -> None:
    # Its texts can ask for delays and failures: no caller of a production server may use it.
    result = voxrelay(
        "say", "[[fail]] hi", "--voice", "tone/square", "-o", str(tmp_path / "tone.wav"),
        "--server", server.target, cwd=tmp_path,
    )  # fmt: skip

    assert result.returncode == 1
    assert "FAILED_PRECONDITION" in result.stderr
    assert "the tone engine is not loaded on this server" in result.stderr


def test_say_with_an_unknown_voice_fails(server: ServeProcess, tmp_path: Path) -> None:
    output = tmp_path / "nope.wav"

    result = voxrelay(
        "say",
        "hi",
        "--voice",
        "nope/x",
        "-o",
        str(output),
        "--server",
        server.target,
        cwd=tmp_path,
    )

    assert result.returncode == 1
    assert "INVALID_ARGUMENT" in result.stderr
    assert "unknown voice" in result.stderr
    assert "Traceback" not in result.stderr
    assert not output.exists()


def test_say_without_a_server_tells_how_to_start_one(tmp_path: Path) -> None:
    output = tmp_path / "hi.wav"

    result = voxrelay(
        "say", "hi", "-o", str(output), "--server", f"127.0.0.1:{free_port()}", cwd=tmp_path
    )

    assert result.returncode == 1
    assert "UNAVAILABLE" in result.stderr
    assert "`voxrelay serve`" in result.stderr
    assert "Traceback" not in result.stderr
    assert not output.exists()


def test_serve_help_documents_listen_and_its_variable(tmp_path: Path) -> None:
    result = voxrelay("serve", "--help", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    # The help of --listen runs until the next option's line.
    listen = re.search(r"^  --listen .*?(?=^  -)", result.stdout, re.MULTILINE | re.DOTALL)
    assert listen is not None, result.stdout
    assert "[VOXRELAY_LISTEN]" in " ".join(listen.group(0).split())


def test_serve_listens_where_voxrelay_listen_says(tmp_path: Path) -> None:
    target = f"127.0.0.1:{free_port()}"
    log = tmp_path / "serve.log"

    with serving([], target, log, user_env(VOXRELAY_LISTEN=target)) as running:
        result = voxrelay("voices", "--server", running.target, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert DEFAULT_VOICE in result.stdout

    assert f"listening on {target} " in log.read_text()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--engines", "espeak", "--default-voice", "piper/en_US-joe-medium"],
            "needs the piper engine, which --engines espeak leaves out",
        ),
        (["--engines", "espeak,banana"], "unknown engine 'banana'; choose from piper"),
        (
            ["--engines", "espeak", "--default-voice", "espeak/zz-nowhere"],
            "espeak voices include espeak/",
        ),
    ],
)
def test_serve_with_voices_it_cannot_set_up_says_what_to_change(
    tmp_path: Path, args: list[str], expected: str
) -> None:
    result = voxrelay("serve", "--listen", f"127.0.0.1:{free_port()}", *args, cwd=tmp_path)

    assert result.returncode == 2, result.stderr
    assert "voxrelay: error:" in result.stderr
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_with_one_engine_defaults_to_its_standard_voice(tmp_path: Path) -> None:
    target = f"127.0.0.1:{free_port()}"
    log = tmp_path / "serve.log"

    with serving(["--listen", target, "--engines", "espeak"], target, log, user_env()) as running:
        result = voxrelay("voices", "--server", running.target, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    rows = result.stdout.splitlines()[1:]
    assert rows[0].split()[0] == "espeak/en-us" and rows[0].split()[-1] == "(default)"
    assert all(row.startswith("espeak/") for row in rows)
