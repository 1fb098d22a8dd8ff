"""`voxrelay`: run the server, speak text through it, list its voices.

voxrelay serve                          start a server (flags or VOXRELAY_* variables)
voxrelay say "Hello there." -o hi.wav   speak a text into a WAV file
some-llm | voxrelay say - -o out.wav    speak stdin as it streams in, line by line
voxrelay voices                         list the server's voices
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import soundfile

from voxrelay.client import AsyncClient, SessionOptions, default_target
from voxrelay.errors import VoxrelayError
from voxrelay.events import Audio, TurnEnded, TurnStarted

_FORMATS = {"s16": "int16", "f32": "float32"}
_WAV_SUBTYPES = {"int16": "PCM_16", "float32": "FLOAT"}


def _env(name: str, default: Any, convert: Callable[[str], Any] = str) -> Any:
    value = os.environ.get(f"VOXRELAY_{name}")
    return default if value is None or value == "" else convert(value)


def _add_server_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server",
        default=default_target(),
        help="host:port of the voxrelay server [VOXRELAY_SERVER] (default: %(default)s)",
    )


def _add_serve(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from voxrelay_server import app

    serve = commands.add_parser(
        "serve",
        help="run a voxrelay server",
        description="Run a voxrelay gRPC server. Every flag also reads VOXRELAY_<FLAG> "
        "from the environment (for example VOXRELAY_LISTEN); the flag wins.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    defaults = app.ServerSettings()
    serve.add_argument(
        "--listen",
        default=_env("LISTEN", app.DEFAULT_LISTEN),
        help="host:port to listen on [VOXRELAY_LISTEN]",
    )
    serve.add_argument(
        "--default-voice",
        default=_env("DEFAULT_VOICE", app.DEFAULT_VOICE),
        help="voice for sessions that name none [VOXRELAY_DEFAULT_VOICE]",
    )
    serve.add_argument(
        "--engines",
        default=_env("ENGINES", ",".join(app.ALL_ENGINES)),
        help="comma-separated engines to load [VOXRELAY_ENGINES]",
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=_env("WORKERS", defaults.workers, int),
        help="piper segments synthesized at once, one core each [VOXRELAY_WORKERS]",
    )
    serve.add_argument(
        "--max-inflight-segments",
        type=int,
        default=_env("MAX_INFLIGHT_SEGMENTS", app.DEFAULT_MAX_INFLIGHT_SEGMENTS, int),
        help="default look-ahead of synthesis over delivery, per session "
        "[VOXRELAY_MAX_INFLIGHT_SEGMENTS]",
    )
    serve.add_argument(
        "--shutdown-grace",
        type=float,
        default=_env("SHUTDOWN_GRACE", app.DEFAULT_SHUTDOWN_GRACE_S, float),
        help="seconds calls in flight may take to finish on SIGTERM [VOXRELAY_SHUTDOWN_GRACE]",
    )
    serve.add_argument(
        "--tone-first-audio-ms",
        type=float,
        default=_env("TONE_FIRST_AUDIO_MS", defaults.tone_first_audio_ms, float),
        help="tone engine: latency before a segment's first audio [VOXRELAY_TONE_FIRST_AUDIO_MS]",
    )
    serve.add_argument(
        "--tone-ms-per-char",
        type=float,
        default=_env("TONE_MS_PER_CHAR", defaults.tone_ms_per_char, float),
        help="tone engine: audio per character of text [VOXRELAY_TONE_MS_PER_CHAR]",
    )
    serve.add_argument(
        "--tone-realtime-factor",
        type=float,
        default=_env("TONE_REALTIME_FACTOR", defaults.tone_realtime_factor, float),
        help="tone engine: seconds of work per second of audio, 0 = instant "
        "[VOXRELAY_TONE_REALTIME_FACTOR]",
    )
    serve.add_argument(
        "--log-level",
        default=_env("LOG_LEVEL", "info"),
        choices=["debug", "info", "warning", "error"],
        help="log verbosity [VOXRELAY_LOG_LEVEL]",
    )
    serve.set_defaults(run=_serve)


def _serve(args: argparse.Namespace) -> int:
    from voxrelay_server import app

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = app.ServerSettings(
        listen=args.listen,
        default_voice=args.default_voice,
        engines=tuple(e.strip() for e in args.engines.split(",") if e.strip()),
        workers=args.workers,
        max_inflight_segments=args.max_inflight_segments,
        tone_first_audio_ms=args.tone_first_audio_ms,
        tone_ms_per_char=args.tone_ms_per_char,
        tone_realtime_factor=args.tone_realtime_factor,
        shutdown_grace_s=args.shutdown_grace,
    )
    asyncio.run(app.serve(settings))
    return 0


def _add_say(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    say = commands.add_parser(
        "say",
        help="speak text through a server into a WAV file",
        description="Speak TEXT (or stdin, streamed line by line, when TEXT is -) and write "
        "the audio to a WAV file. Prints time to first audio and the real-time factor.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    say.add_argument("text", help="the text to speak, or - to stream stdin")
    _add_server_option(say)
    say.add_argument(
        "-o", "--output", type=Path, default=Path("voxrelay.wav"), help="WAV file to write"
    )
    say.add_argument("--voice", default="", help="voice name; empty = the server's default")
    say.add_argument(
        "--format",
        choices=sorted(_FORMATS),
        default="s16",
        help="sample format: s16 (16-bit PCM) or f32 (32-bit float)",
    )
    say.add_argument(
        "--sample-rate", type=int, default=0, help="output rate in Hz; 0 = the voice's native rate"
    )
    say.add_argument("--speed", type=float, default=0.0, help="0.25 to 4.0; 0 = normal")
    say.add_argument("--instructions", default="", help="speaking instructions (openai voices)")
    say.add_argument("--chunk-ms", type=int, default=0, help="target audio message length")
    say.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    say.set_defaults(run=_say)


def _say(args: argparse.Namespace) -> int:
    options = SessionOptions(
        voice=args.voice,
        dtype=_FORMATS[args.format],  # type: ignore[arg-type]
        sample_rate_hz=args.sample_rate,
        speed=args.speed,
        instructions=args.instructions,
        chunk_ms=args.chunk_ms,
    )
    chunks = _stdin_lines() if args.text == "-" else _single(args.text)
    report = _Reporter(quiet=args.quiet)
    return asyncio.run(_speak(args.server, options, chunks, args.output, report))


async def _single(text: str) -> AsyncIterator[str]:
    yield text


async def _stdin_lines() -> AsyncIterator[str]:
    while True:
        line = await asyncio.to_thread(sys.stdin.readline)
        if not line:
            return
        yield line


class _Reporter:
    def __init__(self, *, quiet: bool) -> None:
        self.quiet = quiet
        self.started = time.perf_counter()
        self.last_text_at = self.started

    def say(self, message: str) -> None:
        if not self.quiet:
            print(f"voxrelay: {message}", file=sys.stderr, flush=True)

    def elapsed_ms(self, since: float | None = None) -> float:
        return (time.perf_counter() - (since or self.started)) * 1000


async def _speak(
    target: str,
    options: SessionOptions,
    texts: AsyncIterator[str],
    output: Path,
    report: _Reporter,
) -> int:
    writer: soundfile.SoundFile | None = None
    samples = 0
    rate = 0
    first_audio_ms: float | None = None
    async with AsyncClient(target) as client, client.session(options) as session:

        async def feed() -> None:
            async for text in texts:
                report.last_text_at = time.perf_counter()
                await session.send_text(text)
            await session.close()

        feeder = asyncio.create_task(feed())
        try:
            async for event in session:
                if isinstance(event, TurnStarted):
                    report.say(f"turn {event.turn} started")
                elif isinstance(event, Audio):
                    if writer is None:
                        first_audio_ms = report.elapsed_ms()
                        rate = event.sample_rate_hz
                        report.say(f"first audio after {first_audio_ms:.0f} ms ({rate} Hz)")
                        writer = soundfile.SoundFile(
                            output,
                            "w",
                            samplerate=rate,
                            channels=1,
                            subtype=_WAV_SUBTYPES[options.dtype],
                            format="WAV",
                        )
                    writer.write(event.samples)
                    samples += len(event.samples)
                elif isinstance(event, TurnEnded):
                    report.say(f"turn {event.turn} ended")
            await feeder
        finally:
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
    _add_server_option(voices)
    voices.set_defaults(run=_voices)


def _voices(args: argparse.Namespace) -> int:
    async def fetch() -> int:
        async with AsyncClient(args.server) as client:
            found = await client.voices()
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="voxrelay", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    _add_serve(commands)
    _add_say(commands)
    _add_voices(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `voxrelay` command."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except VoxrelayError as error:
        print(f"voxrelay: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `voxrelay voices | head`
        sys.stderr.close()
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())
