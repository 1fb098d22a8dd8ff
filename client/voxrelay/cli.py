"""`voxrelay`: run the server, speak text through it, list its voices.

voxrelay serve                          start a server (with the voxrelay-server package)
voxrelay say "Hello there." -o hi.wav   speak a text into a WAV file
voxrelay say "Hi." --format opus        ... into an Ogg Opus file (voxrelay.opus)
some-llm | voxrelay say - -o out.wav    speak stdin as it streams in
voxrelay voices                         list the server's voices
"""

from __future__ import annotations

import argparse
import asyncio
import codecs
import functools
import os
import struct
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import BinaryIO, Protocol

import soundfile

from voxrelay.client import AsyncClient, SampleType, SessionOptions, default_target
from voxrelay.errors import VoxrelayError
from voxrelay.events import (
    Audio,
    Resumed,
    SessionStarted,
    TurnEnded,
    TurnStarted,
    WireEncoding,
    Word,
    Words,
)

_FORMATS: dict[str, tuple[WireEncoding, SampleType]] = {
    "s16": ("pcm", "int16"),
    "f32": ("pcm", "float32"),
    "mulaw": ("mulaw", "int16"),
    "alaw": ("alaw", "int16"),
    "opus": ("opus", "int16"),
}
_WAV_SUBTYPES = {"int16": "PCM_16", "float32": "FLOAT"}
_G711_FORMAT_TAGS = {"mulaw": 7, "alaw": 6}
"""WAVE_FORMAT_MULAW and WAVE_FORMAT_ALAW, the format tags players know G.711 by."""


class _AudioWriter(Protocol):
    def write(self, audio: Audio) -> None: ...

    def close(self) -> None: ...


class _PcmWav:
    """PCM into a WAV file through libsndfile."""

    def __init__(self, path: Path, rate: int, dtype: SampleType) -> None:
        self._file = soundfile.SoundFile(
            path, "w", samplerate=rate, channels=1, subtype=_WAV_SUBTYPES[dtype], format="WAV"
        )

    def write(self, audio: Audio) -> None:
        self._file.write(audio.samples)

    def close(self) -> None:
        self._file.close()


class _G711Wav:
    """The server's G.711 bytes, as sent, into a WAV file with the mu-law or A-law
    format tag: no decoding and re-encoding on the way. The sizes in the header are
    written when the file is closed."""

    def __init__(self, path: Path, rate: int, encoding: WireEncoding) -> None:
        self._file: BinaryIO = path.open("wb")
        self._tag = _G711_FORMAT_TAGS[encoding]
        self._rate = rate
        self._size = 0
        self._header()

    def _header(self) -> None:
        fmt = struct.pack("<HHIIHHH", self._tag, 1, self._rate, self._rate, 1, 8, 0)
        pad = self._size % 2
        riff_size = 4 + (8 + len(fmt)) + (8 + 4) + (8 + self._size + pad)
        self._file.write(b"RIFF" + struct.pack("<I", riff_size) + b"WAVE")
        self._file.write(b"fmt " + struct.pack("<I", len(fmt)) + fmt)
        self._file.write(b"fact" + struct.pack("<II", 4, self._size))  # samples, one a byte
        self._file.write(b"data" + struct.pack("<I", self._size))

    def write(self, audio: Audio) -> None:
        self._file.write(audio.data)
        self._size += len(audio.data)

    def close(self) -> None:
        if self._size % 2:
            self._file.write(b"\0")  # RIFF chunks are padded to an even length
        self._file.seek(0)
        self._header()
        self._file.close()


class _OggOpusFile:
    """The server's Ogg pages, as sent: one turn is one complete Ogg Opus stream."""

    def __init__(self, path: Path) -> None:
        self._file: BinaryIO = path.open("wb")

    def write(self, audio: Audio) -> None:
        self._file.write(audio.data)

    def close(self) -> None:
        self._file.close()


def _open_writer(path: Path, rate: int, options: SessionOptions) -> _AudioWriter:
    if options.encoding == "opus":
        return _OggOpusFile(path)
    if options.encoding in _G711_FORMAT_TAGS:
        return _G711Wav(path, rate, options.encoding)
    return _PcmWav(path, rate, options.dtype)


def _add_server_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server",
        default=default_target(),
        help="the voxrelay server, as any gRPC target: host:port, dns:///host:port (every "
        "address the name resolves to) or ipv4:10.0.0.1:50051,10.0.0.2:50051; sessions go "
        "round-robin to the replicas that are up [VOXRELAY_SERVER] (default: %(default)s)",
    )
    parser.add_argument(
        "--health-check",
        action="store_true",
        default=os.environ.get("VOXRELAY_HEALTH_CHECK", "") not in ("", "0", "false"),
        help="send no call to a replica whose grpc.health.v1 status is not SERVING "
        "(loading, or draining after SIGTERM) [VOXRELAY_HEALTH_CHECK]",
    )
    _add_security_options(parser)


class UsageError(Exception):
    """A command-line option that cannot be used as given; the message says why.

    `voxrelay` prints it without a traceback and exits 2. Commands that other
    distributions add (the server's `serve`) raise it too.
    """


def _add_security_options(parser: argparse.ArgumentParser) -> None:
    env = os.environ
    parser.add_argument(
        "--tls-ca",
        default=env.get("VOXRELAY_TLS_CA"),
        help="PEM file of the CA that signed the server's certificate; connects over TLS "
        "[VOXRELAY_TLS_CA]",
    )
    parser.add_argument(
        "--tls-cert",
        default=env.get("VOXRELAY_TLS_CERT"),
        help="PEM client certificate, for servers that require mutual TLS [VOXRELAY_TLS_CERT]",
    )
    parser.add_argument(
        "--tls-key",
        default=env.get("VOXRELAY_TLS_KEY"),
        help="PEM private key of --tls-cert [VOXRELAY_TLS_KEY]",
    )
    # The default is read at use, not here, so --help never prints the token.
    parser.add_argument(
        "--token",
        default=argparse.SUPPRESS,
        help="bearer token for servers that require one; prefer the variable, command "
        "lines are visible to other users [VOXRELAY_TOKEN]",
    )


def _connect(args: argparse.Namespace) -> AsyncClient:
    """A client for `--server` with the TLS and token options; call inside the event loop."""
    token = getattr(args, "token", None) or os.environ.get("VOXRELAY_TOKEN") or None
    try:
        return AsyncClient(
            args.server,
            tls_ca=args.tls_ca or None,
            tls_cert=args.tls_cert or None,
            tls_key=args.tls_key or None,
            token=token,
            resume=getattr(args, "resume", True),
            health_check=args.health_check,
        )
    except (OSError, ValueError) as error:
        raise UsageError(str(error)) from None


class _DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: ...)" where it tells something: not for a default of None, "" or
    an off switch, nor for a --no-... switch (whose "default: True" reads as the
    opposite of what it means), nor where the help already says its default."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if (
            action.default is None
            or action.default is False
            or action.default == ""
            or isinstance(action, argparse._StoreFalseAction)
            or "default" in (action.help or "")
        ):
            return action.help
        return super()._get_help_string(action)


def _add_say(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    say = commands.add_parser(
        "say",
        help="speak text through a server into a WAV or Ogg Opus file",
        description="Speak TEXT (or stdin when TEXT is -, sent as it arrives, not a line "
        "at a time) and write the audio to a WAV file (an Ogg Opus file with --format "
        "opus). Prints time to first audio and the real-time factor; on a terminal, also "
        "the seconds of audio so far. An output file that cannot be written stops it "
        "before anything is synthesized.",
        formatter_class=_DefaultsHelpFormatter,
    )
    say.add_argument("text", help="the text to speak, or - to stream stdin")
    _add_server_option(say)
    say.add_argument(
        "-o",
        "--output",
        type=Path,
        default=None,
        help="file to write (default: voxrelay.wav, or voxrelay.opus with --format opus)",
    )
    say.add_argument("--voice", default="", help="voice name; empty = the server's default")
    say.add_argument(
        "--format",
        choices=list(_FORMATS),
        default="s16",
        help="s16 (16-bit PCM WAV), f32 (32-bit float WAV), mulaw or alaw (G.711 WAV, as the "
        "server sent it; 8000 Hz is their usual rate) or opus (Ogg Opus, as the server "
        "sent it; rate 8000, 12000, 16000, 24000 or 48000)",
    )
    say.add_argument(
        "--sample-rate",
        type=int,
        default=0,
        help="output rate in Hz; 0 = the voice's native rate (opus: the Opus rate at or above it)",
    )
    say.add_argument("--speed", type=float, default=0.0, help="0.25 to 4.0; 0 = normal")
    say.add_argument("--instructions", default="", help="speaking instructions (openai voices)")
    say.add_argument(
        "--chunk-ms",
        type=int,
        default=0,
        help="target audio message length in milliseconds, at most 10000; 0 = as the "
        "engine makes it (messages of at most a second)",
    )
    say.add_argument(
        "--segmentation",
        choices=("first_clause", "sentences"),
        default="first_clause",
        help="how a turn is cut: its first segment at a clause (earliest audio), or at sentences",
    )
    say.add_argument(
        "--words",
        action="store_true",
        help="print where each word is spoken, a line each on stdout: turn, start and end "
        "in seconds from the turn's start, the word (tab-separated; voices with word timing)",
    )
    say.add_argument(
        "--no-resume",
        dest="resume",
        action="store_false",
        help="fail when the server is lost mid-session; by default the session resumes on "
        "another replica of --server, and the file gets the audio of the cut segment once "
        "(with opus the resumed audio is a new Ogg stream, the cut segment's start in it "
        "again)",
    )
    say.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    say.set_defaults(run=_say)


def _say(args: argparse.Namespace) -> int:
    encoding, dtype = _FORMATS[args.format]
    options = SessionOptions(
        voice=args.voice,
        dtype=dtype,
        encoding=encoding,
        sample_rate_hz=args.sample_rate,
        speed=args.speed,
        instructions=args.instructions,
        chunk_ms=args.chunk_ms,
        segmentation=args.segmentation,
        word_timestamps=args.words,
    )
    output = args.output or Path("voxrelay.opus" if encoding == "opus" else "voxrelay.wav")
    _check_writable(output)  # before anything is synthesized
    chunks = _stdin_chunks() if args.text == "-" else _whole(args.text)
    report = _Reporter(quiet=args.quiet, live=sys.stderr.isatty())
    connect = functools.partial(_connect, args)
    return asyncio.run(_speak(connect, options, chunks, output, report))


def _check_writable(path: Path) -> None:
    """Fail with what is wrong unless `path` can be written; leaves no file behind."""
    existed = path.exists()
    try:
        with path.open("ab"):
            pass
    except OSError as error:
        reason = error.strerror or str(error)
        if isinstance(error, FileNotFoundError) and not path.parent.is_dir():
            reason = f"the folder {str(path.parent)!r} does not exist"
        raise UsageError(f"cannot write the output file {str(path)!r}: {reason}") from None
    if not existed:
        path.unlink()


STDIN_READ_BYTES = 16384
"""Bytes read from stdin at most at once (`send_text` cuts any text to the server's
limit per message itself)."""


class _TextAhead:
    """Keeps the text `say` has sent and not yet heard spoken within half of the
    session's text budget (`SessionStarted.text_budget_chars`), so a long stdin is
    spoken whole instead of refused with RESOURCE_EXHAUSTED: text is held back until
    audio shows the speech has got far enough (`Audio.text_end`, in the one turn
    `say` speaks)."""

    def __init__(self) -> None:
        self._limit = 0  # 0: no limit (a server that does not say)
        self._known = asyncio.Event()
        self._sent = 0
        self._spoken = 0
        self._moved = asyncio.Event()

    def budget(self, chars: int) -> None:
        """The session started with this text budget."""
        self._limit = max(chars // 2, 1) if chars else 0
        self._known.set()

    def spoken_to(self, text_end: int) -> None:
        self._spoken = max(self._spoken, text_end)
        self._moved.set()

    async def pieces(self, text: str) -> AsyncIterator[str]:
        """`text` in pieces, each once there is room for it (after audio came)."""
        await self._known.wait()
        while text:
            while self._limit and self._sent - self._spoken >= self._limit:
                self._moved.clear()
                await self._moved.wait()
            room = self._limit - (self._sent - self._spoken) if self._limit else len(text)
            piece, text = text[:room], text[room:]
            self._sent += len(piece)
            yield piece


async def _whole(text: str) -> AsyncIterator[str]:
    """The TEXT argument as the one chunk it is (`send_text` sends a long one in
    pieces the server takes)."""
    yield text


async def _stdin_chunks() -> AsyncIterator[str]:
    """Stdin's text as it arrives: each read's bytes as soon as the pipe has any, not
    a line at a time, so tokens piped without newlines are spoken as they come.

    A daemon thread reads, so a session that ends while stdin is still open (the
    server refused it, say) does not wait for the writer to close it.
    """
    loop = asyncio.get_running_loop()
    reads: asyncio.Queue[bytes | BaseException] = asyncio.Queue()
    fd = sys.stdin.fileno()

    def read_all() -> None:
        while True:
            try:
                data = os.read(fd, STDIN_READ_BYTES)
            except OSError as error:
                loop.call_soon_threadsafe(reads.put_nowait, error)
                return
            loop.call_soon_threadsafe(reads.put_nowait, data)
            if not data:
                return

    threading.Thread(target=read_all, name="voxrelay-stdin", daemon=True).start()
    encoding = sys.stdin.encoding or "utf-8"
    decoder = codecs.getincrementaldecoder(encoding)()  # a character split across reads
    while True:
        data = await reads.get()
        if isinstance(data, BaseException):
            raise UsageError(f"cannot read stdin: {data}")
        try:
            text = decoder.decode(data, final=not data)
        except UnicodeDecodeError as error:
            raise UsageError(
                f"stdin is not {encoding} text ({error.reason} at byte {error.start} of a "
                "read); voxrelay speaks text"
            ) from None
        if text:
            yield text
        if not data:
            return


class _Reporter:
    """What `say` tells on stderr: events as lines; on a terminal, also a live line
    with the time to first audio and the seconds of audio so far."""

    REFRESH_S = 0.1

    def __init__(self, *, quiet: bool, live: bool = False) -> None:
        self.quiet = quiet
        self.live = live and not quiet
        self.started = time.perf_counter()
        self.last_text_at = self.started
        self._progress = ""
        self._drawn_at = 0.0

    def say(self, message: str) -> None:
        if self.quiet:
            return
        clear = "\r\033[K" if self._progress else ""
        print(f"{clear}voxrelay: {message}", file=sys.stderr, flush=not self._progress)
        if self._progress:
            print(self._progress, end="", file=sys.stderr, flush=True)

    def progress(self, first_audio_ms: float, audio_s: float, *, force: bool = False) -> None:
        """Redraw the live line (at most every `REFRESH_S`, unless `force`)."""
        now = time.perf_counter()
        if not self.live or (not force and now - self._drawn_at < self.REFRESH_S):
            return
        self._drawn_at = now
        self._progress = (
            f"voxrelay: first audio after {first_audio_ms:.0f} ms; {audio_s:.1f} s of audio so far"
        )
        print(f"\r\033[K{self._progress}", end="", file=sys.stderr, flush=True)

    def end_progress(self) -> None:
        """Leave the live line as it is, and go on below it."""
        if self._progress:
            print(file=sys.stderr, flush=True)
            self._progress = ""

    def elapsed_ms(self, since: float | None = None) -> float:
        return (time.perf_counter() - (since or self.started)) * 1000


async def _speak(
    connect: Callable[[], AsyncClient],
    options: SessionOptions,
    texts: AsyncIterator[str],
    output: Path,
    report: _Reporter,
) -> int:
    writer: _AudioWriter | None = None
    samples = 0
    rate = 0
    session_rate = 1  # SessionStarted's, set before any Resumed can come
    first_audio_ms: float | None = None
    words: list[tuple[int, Word]] = []
    """Word timing not printed yet: a turn's first words come before its audio, which
    says the rate."""

    def print_words() -> None:
        for turn, word in words:
            start, end = word.start_samples / rate, word.end_samples / rate
            print(f"{turn}\t{start:.3f}\t{end:.3f}\t{word.text}", flush=True)
        words.clear()

    async with connect() as client, client.session(options) as session:
        ahead = _TextAhead()

        async def feed() -> None:
            async for text in texts:
                report.last_text_at = time.perf_counter()
                async for piece in ahead.pieces(text):
                    await session.send_text(piece)
            await session.close()

        feeder = asyncio.create_task(feed())
        listening = asyncio.current_task()
        assert listening is not None

        def stop_listening(fed: asyncio.Task[None]) -> None:
            # Input that fails (stdin unreadable, not text) ends the session too: the
            # server would otherwise wait for the rest of the text.
            if not fed.cancelled() and fed.exception() is not None:
                listening.cancel()

        feeder.add_done_callback(stop_listening)
        try:
            async for event in session:
                if isinstance(event, SessionStarted):
                    session_rate = event.sample_rate_hz
                    ahead.budget(event.text_budget_chars)
                    # The id the server's logs carry: what to quote about a problem.
                    report.say(
                        f"session {event.session_id}: {event.voice}, {event.encoding} "
                        f"at {event.sample_rate_hz} Hz"
                    )
                elif isinstance(event, TurnStarted):
                    report.say(f"turn {event.turn} started")
                elif isinstance(event, Resumed):
                    report.say(
                        f"resumed on another server as session {event.session_id} "
                        f"({event.reason}); turn {event.turn} goes on from segment "
                        f"{event.segment}: the {event.repeated_samples / session_rate:.2f} s "
                        "of it received before the cut come again, "
                        + (
                            "in the file too (a new Ogg stream)"
                            if options.encoding == "opus"
                            else "written to the file once"
                        )
                    )
                elif isinstance(event, Audio):
                    event = event.unrepeated()
                    if writer is None:
                        first_audio_ms = report.elapsed_ms()
                        rate = event.sample_rate_hz
                        report.say(f"first audio after {first_audio_ms:.0f} ms ({rate} Hz)")
                        writer = _open_writer(output, rate, options)
                    writer.write(event)
                    samples += event.num_samples
                    ahead.spoken_to(event.text_end)
                    assert first_audio_ms is not None
                    report.progress(first_audio_ms, samples / rate)
                    print_words()
                elif isinstance(event, Words):
                    words.extend((event.turn, word) for word in event.words)
                    if rate:
                        print_words()
                elif isinstance(event, TurnEnded):
                    report.say(f"turn {event.turn} ended")
            await feeder
        except asyncio.CancelledError:
            failure = None if feeder.cancelled() or not feeder.done() else feeder.exception()
            if failure is not None:
                raise failure from None
            raise
        finally:
            if first_audio_ms is not None:
                report.progress(first_audio_ms, samples / rate, force=True)
            report.end_progress()
            feeder.cancel()
            if writer is not None:
                writer.close()
    total_s = report.elapsed_ms() / 1000
    audio_s = samples / rate if rate else 0.0
    if writer is None:
        report.say("the server sent no audio (was the text empty?); no file written")
        return 0
    rtf = total_s / audio_s if audio_s else float("inf")
    report.say(
        f"wrote {output} ({audio_s:.2f} s of audio) in {total_s:.2f} s: "
        f"real-time factor {rtf:.3f}, first audio {first_audio_ms:.0f} ms"
    )
    return 0


def _add_voices(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    voices = commands.add_parser(
        "voices",
        help="list the voices a server offers",
        description="List the voices a server offers, the default first.",
    )
    voices.add_argument("--engine", default="", help="only this engine's voices")
    voices.add_argument(
        "--language",
        default="",
        help="only voices that speak this language: a BCP-47 tag such as de, en-US or zh, "
        "matched as a prefix, case-insensitively (en matches en-US and en-GB; zh also "
        "matches the Chinese languages cmn, yue, ...)",
    )
    _add_server_option(voices)
    voices.set_defaults(run=_voices)


def _voices(args: argparse.Namespace) -> int:
    async def fetch() -> int:
        async with _connect(args) as client:
            found = await client.voices(args.language)
            if not found and args.language:
                spoken = sorted({c for v in await client.voices() for c in v.language_codes})
                print(
                    f"voxrelay: no voice on this server speaks {args.language!r}; its "
                    f"languages: {', '.join(spoken)}",
                    file=sys.stderr,
                )
                return 1
        rows = [v for v in found if not args.engine or v.engine == args.engine]
        width = max((len(v.name) for v in rows), default=10)
        print(f"{'VOICE':<{width}}  {'ENGINE':<7} {'RATE':>6}  LANGUAGES")
        for voice in rows:
            mark = "  (default)" if voice.is_default else ""
            print(
                f"{voice.name:<{width}}  {voice.engine:<7} {voice.native_sample_rate_hz:>6}  "
                f"{','.join(voice.language_codes)}{mark}"
            )
        return 0

    return asyncio.run(fetch())


COMMANDS_GROUP = "voxrelay.commands"
"""Entry point group of the commands other distributions add to `voxrelay`: each entry
is a function that takes the subparsers and adds its command (the server's `serve`)."""
SERVER_MISSING = (
    "`voxrelay serve` runs the server, which is not installed here: this is the light "
    "client (voxrelay). Install the server with `pip install voxrelay-server` "
    "(from a checkout: `make run`)"
)


def _add_missing_serve(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`serve` without the server: it says how to install it."""
    serve = commands.add_parser(
        "serve",
        help="run a voxrelay server (needs the voxrelay-server package)",
        description=SERVER_MISSING,
        add_help=False,
    )
    serve.set_defaults(run=_server_missing, takes_any_arguments=True)


def _server_missing(args: argparse.Namespace) -> int:
    raise UsageError(SERVER_MISSING)


def _add_installed_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Commands other installed distributions add; `serve` says how to get it if none does."""
    added = set()
    for entry in sorted(metadata.entry_points(group=COMMANDS_GROUP), key=lambda e: e.name):
        try:
            add_command = entry.load()
        except ImportError as error:
            # A broken install of another package must not take `say` and `voices` down.
            _add_broken_command(commands, entry.name, f"{entry.value} ({error})")
        else:
            add_command(commands)
        added.add(entry.name)
    if "serve" not in added:
        _add_missing_serve(commands)


def _add_broken_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], name: str, what: str
) -> None:
    """A command whose package is installed but cannot be imported: it says so."""
    message = (
        f"`voxrelay {name}` cannot be loaded: {what}; reinstall the package that provides "
        "it (for serve: pip install --force-reinstall voxrelay-server)"
    )

    def broken(args: argparse.Namespace) -> int:
        raise UsageError(message)

    command = commands.add_parser(name, help=f"(cannot be loaded: {what})", add_help=False)
    command.set_defaults(run=broken, takes_any_arguments=True)


def build_parser() -> argparse.ArgumentParser:
    """The `voxrelay` command: `say`, `voices`, and the commands installed packages add."""
    parser = argparse.ArgumentParser(
        prog="voxrelay", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    _add_installed_commands(commands)
    _add_say(commands)
    _add_voices(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `voxrelay` command."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # A command that only says it is missing takes the options meant for it.
    if extra and not getattr(args, "takes_any_arguments", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        code: int = args.run(args)
    except VoxrelayError as error:
        print(f"voxrelay: error: {error}", file=sys.stderr)
        return 1
    except UsageError as error:
        print(f"voxrelay: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `voxrelay voices | head`
        sys.stderr.close()
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())
