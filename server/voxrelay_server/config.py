"""Server settings: one dataclass, each field a flag and a `VOXRELAY_*` variable.

`ServerSettings` is the single source of truth: `voxrelay serve --help`, the
environment parsing and the README's settings table are all generated from its
fields, so a new setting cannot be documented in one place and missed in another.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from voxrelay_server.engines.openai_engine import DEFAULT_MODEL as OPENAI_DEFAULT_MODEL
from voxrelay_server.engines.openai_engine import DEFAULT_VOICES as OPENAI_DEFAULT_VOICES
from voxrelay_server.engines.tone import VOICE_NAME as TONE_VOICE_NAME
from voxrelay_server.settings import DEFAULT_MAX_SEGMENT_CHARS

ENV_PREFIX = "VOXRELAY_"
ALL_ENGINES = ("piper", "espeak", "tone", "openai")
DEFAULT_ENGINES = ("piper", "espeak", "openai")
"""What a server loads unless told otherwise: the real voices (openai when configured)."""
STANDARD_VOICES = {
    "piper": "piper/en_US-joe-medium",
    "espeak": "espeak/en-us",
    "tone": TONE_VOICE_NAME,
    "openai": f"openai/{OPENAI_DEFAULT_VOICES[0]}",
}
"""Each engine's standard voice: the default voice is the first loaded of these."""
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _setting(
    default: Any,
    help: str,
    *,
    name: str = "",
    choices: tuple[str, ...] = (),
    secret: bool = False,
    minimum: float | None = None,
) -> Any:
    metadata = {
        "help": help,
        "name": name,
        "choices": choices,
        "secret": secret,
        "minimum": minimum,
    }
    # Secrets stay out of repr(), so logging the settings never leaks them.
    if callable(default):
        return field(default_factory=default, metadata=metadata, repr=not secret)
    return field(default=default, metadata=metadata, repr=not secret)


@dataclass(frozen=True)
class ServerSettings:
    """Everything `voxrelay serve` can set. Defaults suit a single host."""

    # Serving
    listen: str = _setting("127.0.0.1:50051", "host:port to listen on")
    default_voice: str = _setting(
        "",
        "voice for sessions that name none; empty: the first loaded of "
        + ", ".join(STANDARD_VOICES.values()),
    )
    engines: tuple[str, ...] = _setting(
        DEFAULT_ENGINES,
        "comma-separated engines to load; `tone`, a synthetic engine whose texts can ask "
        "for delays and failures, is for tests and benchmarks and loads only when named",
    )
    workers: int = _setting(
        lambda: os.cpu_count() or 1,
        "piper segments synthesized at once server-wide, one core each; the default is the "
        "number of cores",
        minimum=1,
    )
    piper_voices: str = _setting(
        "",
        "directory of piper voices to offer beside the bundled one: each NAME.onnx with its "
        "NAME.onnx.json is offered as piper/NAME, loaded at start-up (about 150 MiB and "
        "0.8 s each); a missing or broken file stops the start",
    )
    espeak_workers: int = _setting(
        1,
        "espeak-ng worker processes, one segment at a time each (one speaks for hundreds of "
        "real-time sessions)",
        minimum=1,
    )
    max_inflight_segments: int = _setting(
        4, "default look-ahead of synthesis over delivery, per session", minimum=1
    )
    # Bounds
    max_sessions: int = _setting(
        256, "concurrent sessions; the next one gets RESOURCE_EXHAUSTED", minimum=1
    )
    max_buffered_text_chars: int = _setting(
        65536,
        "characters a session may have waiting to be spoken; more gets RESOURCE_EXHAUSTED",
        minimum=1,
    )
    max_segment_chars: int = _setting(
        DEFAULT_MAX_SEGMENT_CHARS,
        "longest segment given to an engine: text with no sentence end is cut at a clause "
        "or word boundary within it (an engine's memory and time grow with it)",
        minimum=40,
    )
    session_audio_buffer_bytes: int = _setting(
        1 << 20,
        "undelivered audio per session at which synthesis pauses until the client reads",
        minimum=1,
    )
    idle_timeout_s: float = _setting(
        300.0,
        "seconds a session may go with no request and nothing to speak; 0 = never",
        name="idle-timeout",
        minimum=0,
    )
    start_timeout_s: float = _setting(
        30.0,
        "seconds a new Stream call may wait before its first message; it holds a session's "
        "place meanwhile, so a silent call gets DEADLINE_EXCEEDED; 0 = never",
        name="start-timeout",
        minimum=0,
    )
    send_timeout_s: float = _setting(
        30.0,
        "seconds a message may wait for the client to read it; a client that stops reading "
        "longer has its session ended (DEADLINE_EXCEEDED) and its place freed; 0 = never",
        name="send-timeout",
        minimum=0,
    )
    prestop_delay_s: float = _setting(
        0.0,
        "seconds after SIGTERM or SIGINT during which health says NOT_SERVING while new "
        "calls are still served, so load balancers that poll health stop sending before "
        "the listener closes; then the drain of --shutdown-grace; a second signal cuts it "
        "short; 0 = drain at once (behind a balancer: more than its health-check interval "
        "times the failures it needs, e.g. 5 on Kubernetes)",
        name="prestop-delay",
        minimum=0,
    )
    shutdown_grace_s: float = _setting(
        10.0,
        "seconds calls in flight may take to finish after SIGTERM or SIGINT (and "
        "--prestop-delay); the process exits at most 13 s after it (the calls' last "
        "messages 5, health watches 2, releasing the engines 5, exiting 1), whatever an "
        "engine is doing",
        name="shutdown-grace",
        minimum=0,
    )
    # HTTP
    http_listen: str = _setting(
        "",
        "host:port of an HTTP listener in the same process, serving the OpenAI-compatible "
        "speech API (POST /v1/audio/speech, GET /v1/models, GET /v1/audio/voices), the "
        "Stream rpc as a WebSocket (/v1/stream) and a page that speaks through it (/), with "
        "the same sessions, limits, TLS and tokens as gRPC; empty = off",
    )
    http_cors_origins: tuple[str, ...] = _setting(
        (),
        "comma-separated origins (scheme://host[:port], or * for any) whose web pages may "
        "call the HTTP listener (CORS) and open its WebSocket; empty = CORS off, and only "
        "the listener's own page may open the WebSocket",
    )
    http_voice_map: tuple[str, ...] = _setting(
        (),
        "comma-separated NAME=VOICE pairs: the voxrelay voice an OpenAI voice name (alloy, "
        "echo, ...) speaks with over HTTP; a name not set speaks with the default voice",
    )
    # Connections
    keepalive_time_s: float = _setting(
        60.0,
        "seconds between keepalive pings on idle connections; 0 = off",
        name="keepalive-time",
        minimum=0,
    )
    keepalive_timeout_s: float = _setting(
        20.0,
        "seconds to wait for a keepalive ping's answer",
        name="keepalive-timeout",
        minimum=0,
    )
    max_connection_age_s: float = _setting(
        0.0,
        "close connections after this many seconds so load balancers can rebalance; 0 = never",
        name="max-connection-age",
        minimum=0,
    )
    max_connection_age_grace_s: float = _setting(
        60.0,
        "seconds calls on an aged connection may take to finish",
        name="max-connection-age-grace",
        minimum=0,
    )
    # Security
    tls_cert: str = _setting("", "PEM certificate chain file; enables TLS with --tls-key")
    tls_key: str = _setting("", "PEM private key file of --tls-cert")
    tls_client_ca: str = _setting(
        "", "PEM CA bundle; when set, clients must present a certificate it signed (mTLS)"
    )
    auth_tokens_file: str = _setting(
        "", "file of accepted bearer tokens, one per line; enables token auth"
    )
    auth_tokens: str = _setting(
        "",
        "comma-separated accepted bearer tokens; prefer the variable or the file, "
        "command lines are visible to other users",
        secret=True,
    )
    auth_health_and_reflection: bool = _setting(
        False, "also require a token for the health and reflection services"
    )
    # Observability
    log_level: str = _setting(
        "info", "log verbosity", choices=("debug", "info", "warning", "error")
    )
    log_format: str = _setting("text", "log line format", choices=("text", "json"))
    log_sensitive_text: bool = _setting(
        False, "put the text callers send into logs and traces (it may be sensitive)"
    )
    metrics_listen: str = _setting(
        "", "host:port for Prometheus metrics over HTTP (/metrics); empty = off"
    )
    otlp_endpoint: str = _setting(
        "", "OTLP/gRPC endpoint for OpenTelemetry traces, e.g. http://127.0.0.1:4317; empty = off"
    )
    # Engines
    tone_first_audio_ms: float = _setting(
        0.0, "tone engine: latency before a segment's audio", minimum=0
    )
    tone_ms_per_char: float = _setting(10.0, "tone engine: audio per character of text", minimum=0)
    tone_realtime_factor: float = _setting(
        0.0, "tone engine: seconds of work per second of audio, 0 = instant", minimum=0
    )
    tone_concurrency: int = _setting(
        64, "tone engine: segments synthesized at once server-wide", minimum=1
    )
    openai_base_url: str = _setting(
        "", "OpenAI-compatible API base URL (enables the openai engine)"
    )
    openai_api_key: str = _setting(
        "", "API key of the openai engine (enables it); OPENAI_API_KEY works too", secret=True
    )
    openai_model: str = _setting(OPENAI_DEFAULT_MODEL, "model the openai engine asks for")
    openai_voices: tuple[str, ...] = _setting(
        OPENAI_DEFAULT_VOICES,
        "voices the openai engine offers",
    )
    openai_concurrency: int = _setting(
        32, "openai engine: requests in flight server-wide", minimum=1
    )

    def __post_init__(self) -> None:
        for settings_field in dataclasses.fields(self):
            minimum = settings_field.metadata["minimum"]
            value = getattr(self, settings_field.name)
            if minimum is not None and value < minimum:
                raise ValueError(
                    f"--{option_name(settings_field)} ({env_name(settings_field)}) must be at "
                    f"least {minimum:g}, not {value:g}"
                )
        unknown = [name for name in self.engines if name not in ALL_ENGINES]
        if unknown:
            raise ValueError(
                f"--engines (VOXRELAY_ENGINES): unknown engine {unknown[0]!r}; "
                f"choose from {', '.join(ALL_ENGINES)}"
            )
        if not self.engines:
            raise ValueError(
                "--engines (VOXRELAY_ENGINES) names no engine; choose from "
                f"{', '.join(ALL_ENGINES)}"
            )
        if self.piper_voices and "piper" not in self.engines:
            raise ValueError(
                f"--piper-voices (VOXRELAY_PIPER_VOICES) {self.piper_voices!r} needs the piper "
                f"engine, which --engines {','.join(self.engines)} leaves out: add it"
            )
        self._check_http()
        if not self.default_voice:
            standard = next(STANDARD_VOICES[e] for e in ALL_ENGINES if e in self.engines)
            object.__setattr__(self, "default_voice", standard)  # frozen: set once, here
        engine = self.default_voice.partition("/")[0]
        if engine not in self.engines:
            raise ValueError(
                f"--default-voice (VOXRELAY_DEFAULT_VOICE) {self.default_voice!r} needs the "
                f"{engine} engine, which --engines {','.join(self.engines)} leaves out: add "
                "it, or choose a voice of those engines (`voxrelay voices` lists them), e.g. "
                f"{STANDARD_VOICES[self.engines[0]]}"
            )

    def _check_http(self) -> None:
        if self.http_listen:
            host, colon, port = self.http_listen.rpartition(":")
            if not colon or not host or not port.isdigit() or int(port) > 65535:
                raise ValueError(
                    f"--http-listen (VOXRELAY_HTTP_LISTEN) {self.http_listen!r} is not "
                    "host:port: give e.g. 127.0.0.1:8080 (port 0 picks a free port)"
                )
        elif self.http_cors_origins or self.http_voice_map:
            flag = "--http-cors-origins" if self.http_cors_origins else "--http-voice-map"
            raise ValueError(f"{flag} is for the HTTP listener, which is off: set --http-listen")
        for origin in self.http_cors_origins:
            if origin != "*" and not origin.startswith(("http://", "https://")):
                raise ValueError(
                    f"--http-cors-origins (VOXRELAY_HTTP_CORS_ORIGINS): {origin!r} is not an "
                    "origin: give scheme://host[:port], e.g. https://app.example.com, or *"
                )
        for pair in self.http_voice_map:
            name, equals, voice = pair.partition("=")
            if not equals or not name.strip() or not voice.strip():
                raise ValueError(
                    f"--http-voice-map (VOXRELAY_HTTP_VOICE_MAP): {pair!r} is not NAME=VOICE: "
                    "give e.g. alloy=piper/en_US-joe-medium,echo=espeak/en-us"
                )


def option_name(settings_field: dataclasses.Field[Any]) -> str:
    """The flag's name without dashes, e.g. `idle-timeout`."""
    return str(settings_field.metadata.get("name") or settings_field.name.replace("_", "-"))


def env_name(settings_field: dataclasses.Field[Any]) -> str:
    """The environment variable, e.g. `VOXRELAY_IDLE_TIMEOUT`."""
    return ENV_PREFIX + option_name(settings_field).replace("-", "_").upper()


def _field_type(settings_field: dataclasses.Field[Any]) -> str:
    return str(settings_field.type)


def _parse(settings_field: dataclasses.Field[Any], raw: str) -> Any:
    kind = _field_type(settings_field)
    if kind == "bool":
        lowered = raw.strip().lower()
        if lowered not in _TRUE | _FALSE:
            raise ValueError(f"{env_name(settings_field)}={raw!r}: use true or false")
        return lowered in _TRUE
    if kind == "int":
        return int(raw)
    if kind == "float":
        return float(raw)
    if kind.startswith("tuple"):
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    return raw


def _default(settings_field: dataclasses.Field[Any]) -> Any:
    if settings_field.default_factory is not dataclasses.MISSING:
        return settings_field.default_factory()
    return settings_field.default


def _shown(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _parser_for(settings_field: dataclasses.Field[Any]) -> Callable[[str], Any]:
    def parse(raw: str) -> Any:
        return _parse(settings_field, raw)

    return parse


def add_arguments(parser: argparse.ArgumentParser, env: Mapping[str, str] = os.environ) -> None:
    """Add one flag per setting; each defaults to its variable, then to the built-in value."""
    for settings_field in dataclasses.fields(ServerSettings):
        variable = env_name(settings_field)
        default = _default(settings_field)
        if variable in env:
            default = _parse(settings_field, env[variable])
        shown = "(hidden)" if settings_field.metadata["secret"] and default else _shown(default)
        help_text = f"{settings_field.metadata['help']} [{variable}] (default: {shown or 'empty'})"
        flag = f"--{option_name(settings_field)}"
        kind = _field_type(settings_field)
        if kind == "bool":
            parser.add_argument(
                flag,
                dest=settings_field.name,
                default=default,
                action=argparse.BooleanOptionalAction,
                help=help_text,
            )
            continue
        choices = settings_field.metadata["choices"] or None
        parser.add_argument(
            flag,
            dest=settings_field.name,
            default=default,
            type=_parser_for(settings_field),
            choices=choices,
            metavar=variable.removeprefix(ENV_PREFIX) if not choices else None,
            help=help_text,
        )


def from_arguments(args: argparse.Namespace) -> ServerSettings:
    """Settings from parsed `add_arguments` flags."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(ServerSettings)}
    return ServerSettings(**values)


def from_env(env: Mapping[str, str] = os.environ, **overrides: Any) -> ServerSettings:
    """Settings from `VOXRELAY_*` variables, then `overrides`."""
    values: dict[str, Any] = {}
    for settings_field in dataclasses.fields(ServerSettings):
        variable = env_name(settings_field)
        if variable in env:
            values[settings_field.name] = _parse(settings_field, env[variable])
    values.update(overrides)
    return ServerSettings(**values)


def markdown_table() -> str:
    """The README's table of settings: flag, variable, default, meaning."""
    rows = ["| flag | variable | default | what it sets |", "| --- | --- | --- | --- |"]
    for settings_field in dataclasses.fields(ServerSettings):
        default = _default(settings_field)
        shown = "cores" if settings_field.name == "workers" else _shown(default)
        rows.append(
            f"| `--{option_name(settings_field)}` | `{env_name(settings_field)}` | "
            f"{f'`{shown}`' if shown else 'empty'} | {settings_field.metadata['help']} |"
        )
    return "\n".join(rows)
