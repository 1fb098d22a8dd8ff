"""Structured logs: text or JSON lines, and one summary line per session.

Fields travel as `extra={...}` on the log record: the JSON formatter turns them
into keys of the line's object, the text formatter appends them as `key=value`.
The text callers send is logged only with `log_sensitive_text`; request
metadata (where bearer tokens live) is never logged here.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import UTC, datetime
from typing import Any

from voxrelay_server.config import ServerSettings
from voxrelay_server.errors import SpeechError
from voxrelay_server.observability.timeline import SegmentRecord, TimelineObserver
from voxrelay_server.settings import SessionSettings

SESSION_LOGGER = "voxrelay.session"
SUMMARY_MESSAGE = "session summary"

# Attributes every LogRecord has; anything else on a record came from `extra`.
_RECORD_ATTRIBUTES = frozenset(
    {
        *vars(logging.LogRecord("", 0, "", 0, "", (), None)),
        "message",
        "asctime",
        "taskName",
    }
)
_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields given to a log call with `extra=`, in the order given."""
    return {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRIBUTES}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, then the extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in extra_fields(record).items():
            line.setdefault(key, value)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        # default=str: a field of an unexpected type must not lose the line.
        return json.dumps(line, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """The classic line, followed by the extra fields as `key=value`."""

    def __init__(self) -> None:
        super().__init__(_TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        fields = extra_fields(record).items()
        return super().formatMessage(record) + "".join(
            f" {key}={_text_value(value)}" for key, value in fields
        )


def _text_value(value: Any) -> str:
    text = str(value)
    # Quoted only when needed, so `key=value` stays one token to grep and split on.
    if not text or any(c.isspace() or c == '"' for c in text):
        return json.dumps(text, ensure_ascii=False)
    return text


class _InstalledHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler `configure_logging` installed, so a second call replaces it."""


def configure_logging(settings: ServerSettings) -> None:
    """Log to stderr at `settings.log_level`, as text or JSON lines (`settings.log_format`)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _InstalledHandler):
            root.removeHandler(handler)
    handler = _InstalledHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())


class SummaryLogObserver(TimelineObserver):
    """Writes one INFO "session summary" line when a session ends (and DEBUG detail)."""

    def __init__(
        self,
        session_id: str,
        settings: SessionSettings,
        *,
        log_sensitive_text: bool,
        logger: logging.Logger | None = None,
    ) -> None:
        super().__init__(session_id, settings)
        self._log = logger or logging.getLogger(SESSION_LOGGER)
        self._log_sensitive_text = log_sensitive_text

    def on_segment_released(self, segment: SegmentRecord, text: str) -> None:
        if not self._log.isEnabledFor(logging.DEBUG):
            return
        fields: dict[str, Any] = {
            "session": self.session_id,
            "turn": segment.turn,
            "segment": segment.segment,
            "chars": segment.text_chars,
        }
        if self._log_sensitive_text:
            fields["text"] = text
        self._log.debug("segment released", extra=fields)

    def on_segment_finished(self, segment: SegmentRecord) -> None:
        if not self._log.isEnabledFor(logging.DEBUG):
            return
        assert segment.outcome is not None
        fields: dict[str, Any] = {
            "session": self.session_id,
            "turn": segment.turn,
            "segment": segment.segment,
            "outcome": segment.outcome.value,
            "audio_s": round(self._seconds(segment.samples_sent), 3),
        }
        if segment.time_to_first_audio_s is not None:
            fields["ttfa_ms"] = round(segment.time_to_first_audio_s * 1000, 1)
        self._log.debug("segment finished", extra=fields)

    def on_session_ended(self, error: SpeechError | None) -> None:
        first = self.first_segment
        ttfa = first.time_to_first_audio_s if first is not None else None
        self._log.info(
            SUMMARY_MESSAGE,
            extra={
                "session": self.session_id,
                "voice": self.settings.voice,
                "turns": self.turn_count,
                "segments": self.segment_count,
                "audio_s": round(self.audio_seconds, 3),
                # Of the session's first segment: what the caller waited for first.
                "ttfa_ms": None if ttfa is None else round(ttfa * 1000, 1),
                "duration_s": round(time.monotonic() - self.started_at, 3),
                "outcome": "OK" if error is None else error.code.name,
            },
        )

    def _seconds(self, samples: int) -> float:
        return samples / self.settings.output.sample_rate_hz
