"""Metrics, traces and logs of a voxrelay server, one module per concern.

`Observability` builds what `ServerSettings` enables and hands the rest of the
server three things: an observer factory for `SpeechService`, interceptors for
`create_server`, and `start()`/`shutdown()` for `serve()`.

- `metrics`: Prometheus metrics on `--metrics-listen` (always when that is set);
- `tracing`: OpenTelemetry spans to `--otlp-endpoint` (when that is set);
- `logs`: text or JSON log lines and a summary line per session (always).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

import grpc
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
from prometheus_client import CollectorRegistry

from voxrelay_server.config import ServerSettings
from voxrelay_server.errors import SpeechError
from voxrelay_server.observability.logs import SummaryLogObserver, configure_logging
from voxrelay_server.observability.metrics import MetricsHttpServer, ServerMetrics
from voxrelay_server.observability.tracing import Tracing, otlp_tracer_provider
from voxrelay_server.observer import CompositeObserver, SessionObserver
from voxrelay_server.settings import SessionSettings

if TYPE_CHECKING:
    from voxrelay_server.service import SpeechService

__all__ = ["Observability", "configure_logging"]

_LOG = logging.getLogger("voxrelay.server")


class Observability:
    """The metrics, tracing and logging of one server, as `settings` enable them.

    `registry` turns metrics on even without `settings.metrics_listen` (for
    scraping in-process); `tracer_provider` turns tracing on with that provider
    instead of an OTLP exporter (tests pass one with an in-memory exporter).
    A provider passed in is the caller's to shut down.
    """

    def __init__(
        self,
        settings: ServerSettings,
        *,
        registry: CollectorRegistry | None = None,
        tracer_provider: trace.TracerProvider | None = None,
    ) -> None:
        self.settings = settings
        self.metrics: ServerMetrics | None = None
        if settings.metrics_listen or registry is not None:
            self.metrics = ServerMetrics(registry)
        self._owned_provider: SdkTracerProvider | None = None
        if tracer_provider is None and settings.otlp_endpoint:
            tracer_provider = self._owned_provider = otlp_tracer_provider(settings.otlp_endpoint)
        self.tracing: Tracing | None = None
        if tracer_provider is not None:
            self.tracing = Tracing(tracer_provider, log_sensitive_text=settings.log_sensitive_text)
        self._http: MetricsHttpServer | None = None

    def observer_factory(self, session_id: str, settings: SessionSettings) -> SessionObserver:
        """The observer of a new session: metrics and tracing when on, the summary log always."""
        observers: list[SessionObserver] = []
        if self.metrics is not None:
            observers.append(self.metrics.observer(session_id, settings))
        if self.tracing is not None:
            observers.append(self.tracing.observer(session_id, settings))
        observers.append(
            SummaryLogObserver(
                session_id, settings, log_sensitive_text=self.settings.log_sensitive_text
            )
        )
        return CompositeObserver(observers)

    def session_rejected(self, error: SpeechError) -> None:
        """A session was refused before it started (bad configuration, server full)."""
        if self.metrics is not None:
            self.metrics.session_rejected(error)

    def watch(self, service: SpeechService) -> None:
        """Export `service`'s state (active sessions, synthesis queues) as gauges."""
        if self.metrics is not None:
            self.metrics.watch(service)

    def server_interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        """Interceptors to add after the security ones: the rpc span when tracing."""
        return [self.tracing.server_interceptor()] if self.tracing is not None else []

    @property
    def metrics_port(self) -> int | None:
        """The port /metrics is served on once started, else None."""
        return self._http.port if self._http is not None else None

    def start(self) -> int | None:
        """Serve /metrics on `settings.metrics_listen` (port 0 picks a free port).

        Returns the bound port, or None when metrics are not served over HTTP.
        """
        if self.metrics is not None and self.metrics.loop is None:
            with contextlib.suppress(RuntimeError):  # started outside an event loop
                self.metrics.loop = asyncio.get_running_loop()
        if self.metrics is None or not self.settings.metrics_listen or self._http is not None:
            return self.metrics_port
        try:
            self._http = MetricsHttpServer(self.metrics.registry, self.settings.metrics_listen)
        except OSError as error:
            # Imported here: serving imports the service, which imports this package.
            from voxrelay_server.serving import ListenError

            raise ListenError(
                f"cannot listen for metrics on {self.settings.metrics_listen}: "
                f"{error.strerror or error}"
            ) from error
        host = self.settings.metrics_listen.rpartition(":")[0]
        _LOG.info("metrics on http://%s:%d/metrics", host, self._http.port)
        return self._http.port

    def shutdown(self) -> None:
        """Stop serving metrics and flush and stop the tracer provider this created."""
        if self._http is not None:
            self._http.stop()
            self._http = None
        if self._owned_provider is not None:
            self._owned_provider.shutdown()
            self._owned_provider = None
