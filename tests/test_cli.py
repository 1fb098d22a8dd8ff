"""The `voxrelay` command as a user runs it: real subprocesses, a real server, real WAV files.

One `voxrelay serve` process (the default engines: piper and espeak) serves the
whole module on a free loopback port; `voxrelay say` and `voxrelay voices` run
against it as separate processes, and their files and messages are checked.
"""

from __future__ import annotations

import asyncio
import http.server
import os
import pty
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import soundfile
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.processes import (
    VOXRELAY,
    ServeProcess,
    free_port,
    start_serve,
    user_env,
    wait_until_answering,
)
from voxrelay import cli

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


def test_say_streams_stdin_as_it_arrives_not_by_lines(server: ServeProcess, tmp_path: Path) -> None:
    first_part = "Hello there, this is the first part. "
    second_part = "And this second part adds a good deal more speech to the very same turn."
    alone = tmp_path / "first.wav"
    result = voxrelay("say", first_part, "-o", str(alone), "--server", server.target, cwd=tmp_path)
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
        process.stdin.write(first_part)  # no newline: tokens as an LLM streams them
        process.stdin.flush()
        # The first part is spoken while stdin is still open: the command streams.
        before_second = read_stderr_until(process, "first audio after")
        assert "turn 1 started" in before_second
        process.stdin.write(second_part)
        process.stdin.close()
        rest = process.stderr.read()
        code = process.wait(timeout=RUN_TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert code == 0, before_second + rest
    assert "turn 1 ended" in rest
    assert "turn 2" not in rest  # chunks without a turn marker make one turn
    assert "so far" not in before_second + rest  # the live line is for terminals only
    samples, rate = soundfile.read(str(output), dtype="float64")
    assert rms(samples) > 0.01
    assert len(samples) / rate > first_alone_s + 1.0


def test_say_shows_live_progress_on_a_terminal(server: ServeProcess, tmp_path: Path) -> None:
    main, terminal = pty.openpty()
    try:
        process = subprocess.Popen(
            [str(VOXRELAY), "say", HELLO, "-o", str(tmp_path / "hi.wav"), "--server",
             server.target],
            cwd=tmp_path, env=user_env(), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=terminal,
        )  # fmt: skip
        os.close(terminal)
        shown = b""
        while True:
            try:
                data = os.read(main, 4096)
            except OSError:  # EIO: the process closed its end of the terminal
                break
            if not data:
                break
            shown += data
        code = process.wait(timeout=RUN_TIMEOUT_S)
    finally:
        os.close(main)

    text = shown.decode()
    assert code == 0, text
    live = re.findall(
        r"\r\x1b\[Kvoxrelay: first audio after (\d+) ms; (\d+\.\d) s of audio so far", text
    )
    assert live, text
    first_ms, audio_s = live[-1]
    summary = re.search(r"wrote \S+ \((\d+\.\d+) s of audio\).*first audio (\d+) ms", text)
    assert summary is not None, text
    assert float(audio_s) == pytest.approx(float(summary.group(1)), abs=0.06)
    assert first_ms == summary.group(2)


def test_say_speaks_a_stdin_longer_than_the_servers_text_budget(tmp_path: Path) -> None:
    """`say -` keeps what it sent and has not heard spoken within the session's text
    budget (SessionStarted.text_budget_chars): a text nine times the budget is spoken
    whole, where sending it as read was refused with RESOURCE_EXHAUSTED."""
    target = f"127.0.0.1:{free_port()}"
    args = ["--listen", target, "--engines", "espeak", "--default-voice", "espeak/en-us"]
    args += ["--max-buffered-text-chars", "600"]
    sentences = [
        f"This is sentence number {n} of a long text read from a pipe. " for n in range(100)
    ]
    text = "".join(sentences)
    assert len(text) > 9 * 600
    output = tmp_path / "long.wav"
    with serving(args, target, tmp_path / "serve.log", user_env()):
        result = subprocess.run(
            [str(VOXRELAY), "say", "-", "-o", str(output), "--server", target],
            cwd=tmp_path, env=user_env(), input=text, text=True, capture_output=True,
            timeout=RUN_TIMEOUT_S, check=False,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    short = tmp_path / "short.wav"
    with serving(args, target, tmp_path / "serve2.log", user_env()):
        one = voxrelay("say", sentences[0], "-o", str(short), "--server", target, cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    # Every sentence spoken: about a hundred times the first one's length.
    ratio = soundfile.info(str(output)).duration / soundfile.info(str(short)).duration
    assert 80 < ratio < 120, ratio


def test_say_stops_on_stdin_that_is_not_text(server: ServeProcess, tmp_path: Path) -> None:
    output = tmp_path / "bytes.wav"
    result = subprocess.run(
        [str(VOXRELAY), "say", "-", "-o", str(output), "--server", server.target],
        cwd=tmp_path, env=user_env(), input=b"Hello \xff\xfe there", capture_output=True,
        timeout=RUN_TIMEOUT_S, check=False,
    )  # fmt: skip

    stderr = result.stderr.decode()
    assert result.returncode == 2, stderr
    assert "stdin is not utf-8 text" in stderr
    assert "Traceback" not in stderr


@pytest.mark.parametrize("where", ["missing folder", "a folder"])
def test_say_to_an_unwritable_output_fails_before_synthesis(tmp_path: Path, where: str) -> None:
    output = tmp_path / "missing" / "out.wav" if where == "missing folder" else tmp_path
    # No server listens there: the output is refused before any connection is made.
    unused = f"127.0.0.1:{free_port()}"

    result = voxrelay("say", "Hello.", "-o", str(output), "--server", unused, cwd=tmp_path)

    assert result.returncode == 2, result.stderr
    assert f"cannot write the output file {str(output)!r}" in result.stderr
    reason = "does not exist" if where == "missing folder" else "Is a directory"
    assert reason in result.stderr
    assert "UNAVAILABLE" not in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "missing").exists()


def test_say_to_a_new_file_that_fails_leaves_no_file(tmp_path: Path) -> None:
    output = tmp_path / "never.wav"

    result = voxrelay("say", "Hello.", "-o", str(output), "--server", f"127.0.0.1:{free_port()}",
                      cwd=tmp_path)  # fmt: skip

    assert result.returncode == 1 and "UNAVAILABLE" in result.stderr
    assert not output.exists()  # the writability check left nothing behind


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


def test_voices_by_language(server: ServeProcess, tmp_path: Path) -> None:
    german = voxrelay("voices", "--language", "de", "--server", server.target, cwd=tmp_path)
    english = voxrelay("voices", "--language", "en_us", "--server", server.target, cwd=tmp_path)
    nowhere = voxrelay("voices", "--language", "xx", "--server", server.target, cwd=tmp_path)
    malformed = voxrelay("voices", "--language", "d e", "--server", server.target, cwd=tmp_path)

    assert german.returncode == 0, german.stderr
    assert [row.split()[0] for row in german.stdout.splitlines()[1:]] == ["espeak/de"]
    assert english.returncode == 0, english.stderr
    assert [row.split()[0] for row in english.stdout.splitlines()[1:]] == [
        DEFAULT_VOICE,
        "espeak/en-us",
        "espeak/en-us-nyc",
    ]
    assert nowhere.returncode == 1
    assert "no voice on this server speaks 'xx'; its languages: " in nowhere.stderr
    assert "de, el, en-029" in nowhere.stderr
    assert malformed.returncode == 1 and "INVALID_ARGUMENT" in malformed.stderr
    assert "not a BCP-47 language tag" in malformed.stderr


def test_say_with_a_voice_that_is_not_there_suggests_the_ones_that_are(
    server: ServeProcess, tmp_path: Path
) -> None:
    result = voxrelay("say", "Hello.", "--voice", "espeak/zh", "-o", str(tmp_path / "zh.wav"),
                      "--server", server.target, cwd=tmp_path)  # fmt: skip

    assert result.returncode == 1
    assert "unknown voice 'espeak/zh': did you mean espeak/cmn, " in result.stderr
    assert "espeak/yue (language 'zh')" in result.stderr


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
    # The HTTP listener is named up front, not only among forty flags.
    assert "with --http-listen, an HTTP listener" in " ".join(result.stdout.split())


def test_say_help_shows_only_defaults_that_say_something(tmp_path: Path) -> None:
    """No "(default: True)" on --no-resume (it reads as resume off), no "(default:
    None)" or "(default: )", no default given twice; informative ones stay."""
    result = voxrelay("say", "--help", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert "(default: True)" not in text
    assert "(default: False)" not in text
    assert "(default: None)" not in text
    assert "(default: )" not in text
    no_resume = re.search(r"--no-resume (.*?) -q", text)
    assert no_resume is not None and "default: True" not in no_resume.group(1)
    assert "(default: s16)" in text and "(default: first_clause)" in text
    assert "--chunk-ms CHUNK_MS target audio message length in milliseconds" in text


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


def test_a_command_whose_package_cannot_be_imported_leaves_the_others_working(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = metadata.EntryPoint("serve", "voxrelay_nowhere.cli:add_serve", cli.COMMANDS_GROUP)
    monkeypatch.setattr(metadata, "entry_points", lambda group: [broken])

    assert cli.main(["serve", "--listen", "127.0.0.1:0"]) == 2
    said = capsys.readouterr().err
    assert "`voxrelay serve` cannot be loaded: voxrelay_nowhere.cli:add_serve" in said
    assert "No module named 'voxrelay_nowhere'" in said and "Traceback" not in said
    with pytest.raises(SystemExit) as helped:
        cli.main(["voices", "--help"])
    assert helped.value.code == 0
    assert "--language" in capsys.readouterr().out


async def _read_stdin_chunks() -> list[str]:
    return [chunk async for chunk in cli._stdin_chunks()]


@settings(max_examples=50, deadline=None)
@given(st.text(min_size=1, max_size=3000), st.sampled_from([1, 2, 3, 5, 7, cli.STDIN_READ_BYTES]))
def test_stdin_is_sent_whole_however_its_reads_cut_it(text: str, read_bytes: int) -> None:
    # Reads of a few bytes cut characters of two to four bytes: they come out whole,
    # nothing is lost or repeated, and no chunk holds more characters than bytes read.
    read_end, write_end = os.pipe()
    stdin, read_size = sys.stdin, cli.STDIN_READ_BYTES
    try:
        sys.stdin = open(read_end, encoding="utf-8", closefd=True)  # noqa: SIM115
        cli.STDIN_READ_BYTES = read_bytes
        with open(write_end, "wb", buffering=0) as writer:
            writer.write(text.encode())  # a pipe holds 64 KiB: all of it, before reading
        chunks = asyncio.run(_read_stdin_chunks())
    finally:
        sys.stdin.close()
        sys.stdin, cli.STDIN_READ_BYTES = stdin, read_size
    assert "".join(chunks) == text
    assert all(0 < len(chunk) <= cli.STDIN_READ_BYTES for chunk in chunks)


def test_say_prints_word_timing(server: ServeProcess, tmp_path: Path) -> None:
    sentence = "Hello there, this line has seven words."
    result = voxrelay(
        "say", sentence, "--words", "-o", str(tmp_path / "w.wav"), "--server", server.target,
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = [line.split("\t") for line in result.stdout.splitlines()]
    assert [word for _, _, _, word in lines] == [
        "Hello",
        "there",
        "this",
        "line",
        "has",
        "seven",
        "words",
    ]
    starts = [float(start) for _, start, _, _ in lines]
    assert starts == sorted(starts) and all(turn == "1" for turn, *_ in lines)
    assert float(lines[-1][2]) <= soundfile.info(str(tmp_path / "w.wav")).duration + 0.001


def test_say_pointed_at_an_http_port_says_so(tmp_path: Path) -> None:
    """The HTTP listener's address given as --server (a mistake easy to make with both
    listeners on): the message says it is HTTP and which address to use instead."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        target = f"127.0.0.1:{server.server_address[1]}"
        result = voxrelay("say", "--server", target, "Hello. ", cwd=tmp_path)
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 1
    assert f"{target} answers, but not in gRPC" in result.stderr, result.stderr
    assert "--listen" in result.stderr and "Traceback" not in result.stderr
