"""A Pipecat TTS service that speaks through voxrelay.

Installed with `pip install 'voxrelay[pipecat]'` (see the README for pipecat's
protobuf pin):

    from voxrelay.adapters.pipecat import VoxrelayTTSService

    tts = VoxrelayTTSService(target="127.0.0.1:50051", voice="piper/en_US-joe-medium")
    pipeline = Pipeline([transport.input(), stt, user_aggregator, llm, tts,
                         transport.output(), assistant_aggregator])

`VoxrelayTTSService` is a `WebsocketTTSService`, pipecat's base for a service that
keeps one streaming connection open and receives audio and word timestamps on it:
its connection is ONE voxrelay `Stream` call for the whole conversation, opened
when the pipeline starts (at the pipeline's output sample rate, which the server
resamples to, with word timing, at real-time pace) and closed when it ends;
pipecat's reconnection opens a new one if the call fails. On it:

- text pipecat hands the service (`run_tts`, by default token by token:
  voxrelay cuts its own segments) goes out as `text` of the turn of its audio
  context (one per LLM response);
- the end of an LLM response (`LLMFullResponseEndFrame`, pipecat's flush of the
  turn's context) and the end of a `TTSSpeakFrame` send `turn_done`;
- an interruption sends `cancel`, with where the listener stopped when the
  output transport said when the bot started speaking (`BotStartedSpeakingFrame`):
  the turn and the samples played since then, in real time, through the contexts
  it played; without that, the position is unknown and the server counts the
  segments it delivered whole.

What comes back: each `Audio` as a `TTSAudioRawFrame` of its context (16-bit PCM,
mono, at the pipeline's rate); each word of `Words` (voices with word timing:
piper, espeak) as a word timestamp, which pipecat turns into `TTSTextFrame`s timed
with the audio (what its assistant aggregator adds to the conversation, so an
interrupted reply keeps only the words played); `TurnEnded` ends its context
(`TTSStoppedFrame`) and is reported, with what the server says the listener heard,
to the `on_turn_spoken` event handler:

    @tts.event_handler("on_turn_spoken")
    async def on_turn_spoken(tts, context_id: str, spoken_text: str, cancelled: bool): ...

A voice without word timing (openai) sends no words: pipecat then gives each
context's text as one `TTSTextFrame` at its end. Changing `voice` or `language`
through `TTSUpdateSettingsFrame` opens a new `Stream` call (a session's voice is
fixed): audio still in flight on the old one is dropped.

This module imports pipecat; the rest of the client does not.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field, replace
from typing import Any

import grpc
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    CancelFrame,
    EndFrame,
    Frame,
    InterruptionFrame,
    StartFrame,
    TTSAudioRawFrame,
    TTSStoppedFrame,
)
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.settings import TTSSettings
from pipecat.services.tts_service import TextAggregationMode, WebsocketTTSService
from pipecat.transcriptions.language import Language
from pipecat.utils.types import is_given

from voxrelay.client import AsyncClient, AsyncSession, SessionOptions
from voxrelay.errors import VoxrelayError
from voxrelay.events import Audio, SessionStarted, TurnEnded, Words

PERMANENT = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)
"""Statuses a new `Stream` call would get again (a bad voice or option, a refused
token): reported as permanent rather than retried."""


@dataclass
class VoxrelayTTSSettings(TTSSettings):
    """Settings of `VoxrelayTTSService`: `voice` is a voxrelay voice name
    (`piper/en_US-joe-medium`; None: the server's default, or `language`'s) and
    `language` a BCP-47 tag for the server to choose a voice by."""


@dataclass
class _Turn:
    """One voxrelay turn of the current call: the pipecat context it speaks, the
    samples it has sent so far, and whether it has ended."""

    context_id: str
    samples: int = 0
    ended: bool = False


@dataclass
class _Run:
    """A run of speech as the output transport plays it: from its
    `BotStartedSpeakingFrame`, the contexts whose audio it played, in order."""

    started_at: float
    contexts: list[str] = field(default_factory=list)


class VoxrelayTTSService(WebsocketTTSService):
    """Pipecat text-to-speech from a voxrelay server, over one `Stream` per pipeline.

    `target` is the server (`VOXRELAY_SERVER`, else 127.0.0.1:50051); `tls_ca` and
    `token` as `voxrelay.AsyncClient` takes them, or an open `client` to use (not
    closed here). `voice` and `language` start the settings (`settings` wins).
    `options` sets the rest of the session (`speed`, `segmentation`, `chunk_ms`,
    ...); its voice, language, rate, dtype, encoding and word timing are the
    service's, and its `pace` is "realtime" unless it says "as_made": audio comes at
    the pace the transport plays it, a short lead ahead (`SessionStarted.pace_lead_ms`),
    so an interruption finds the turn still the server's to cut and what it held is
    never sent. A response's context ends when the server ends its turn;
    `stop_frame_timeout_s` (pipecat's, 30 s here) only ends one that hears nothing
    for that long. Text goes to the server token by token unless
    `text_aggregation_mode` says otherwise.
    """

    Settings = VoxrelayTTSSettings
    _settings: VoxrelayTTSSettings

    def __init__(
        self,
        *,
        target: str | None = None,
        client: AsyncClient | None = None,
        voice: str | None = None,
        language: Language | str | None = None,
        options: SessionOptions | None = None,
        tls_ca: str | None = None,
        token: str | None = None,
        sample_rate: int | None = None,
        text_aggregation_mode: TextAggregationMode | None = None,
        stop_frame_timeout_s: float = 30.0,
        settings: VoxrelayTTSSettings | None = None,
        **kwargs: Any,
    ) -> None:
        defaults = VoxrelayTTSSettings(model=None, voice=voice, language=language)
        if settings is not None:
            defaults.apply_update(settings)
        super().__init__(
            text_aggregation_mode=text_aggregation_mode or TextAggregationMode.TOKEN,
            # Words come timed from the server; pipecat makes the text frames.
            push_text_frames=False,
            push_start_frame=True,
            pause_frame_processing=False,
            # The server ends each context (TURN_ENDED); pipecat's own end, a context
            # with nothing new for this long, is only a safety net. Its default, 3 s,
            # is shorter than a long first sentence can take on a busy server, and
            # would drop that sentence's audio when it came.
            stop_frame_timeout_s=stop_frame_timeout_s,
            sample_rate=sample_rate,
            settings=defaults,
            **kwargs,
        )
        self._register_event_handler("on_turn_spoken")
        self._target = target
        self._given_client = client
        self._own_client: AsyncClient | None = None
        self._tls_ca = tls_ca
        self._token = token
        self._options = options or SessionOptions()
        self._session: AsyncSession | None = None
        self._receive_task: asyncio.Task[None] | None = None
        self.started: SessionStarted | None = None
        """The current call's `session_started`: its id, voice and rate."""
        self._turns: dict[int, _Turn] = {}
        """The call's turns by number (numbered from 1 as text opens them, as the
        server numbers them)."""
        self._opened_turns = 0
        self._open_turn: int | None = None
        """The turn text is going to; None once `turn_done` or `cancel` closed it."""
        self._run: _Run | None = None
        self._handed: dict[str, int] = {}
        """Samples of each context handed on towards the transport."""

    def can_generate_metrics(self) -> bool:
        """Time to first byte and usage metrics are reported."""
        return True

    def session_options(self) -> SessionOptions:
        """The options of the next `Stream` call."""
        voice = self._settings.voice
        language = self._settings.language
        return replace(
            self._options,
            voice=voice if isinstance(voice, str) else "",
            language_code=str(language) if is_given(language) and language else "",
            sample_rate_hz=self.sample_rate,
            dtype="int16",
            encoding="pcm",
            word_timestamps=True,
            # A transport plays audio as it comes: sent at real-time pace, a turn is
            # still the server's to cancel while it plays (as made, the server would
            # have sent all of it, and ended it, long before).
            pace=self._options.pace or "realtime",
        )

    # Connection: one `Stream` call.

    async def start(self, frame: StartFrame) -> None:
        """Open the conversation's `Stream` call once the output rate is known."""
        await super().start(frame)
        await self._connect()

    async def stop(self, frame: EndFrame) -> None:
        """Close the call after the last audio has played."""
        await super().stop(frame)
        await self._close_own_client()

    async def cancel(self, frame: CancelFrame) -> None:
        """Close the call at once."""
        await super().cancel(frame)
        await self._close_own_client()

    async def _connect(self) -> None:
        await super()._connect()  # type: ignore[no-untyped-call]
        await self._connect_websocket()
        if self._session is not None and self._receive_task is None:
            self._receive_task = self.create_task(self._receive_task_handler(self._report_error))

    async def _disconnect(self) -> None:
        await super()._disconnect()  # type: ignore[no-untyped-call]
        if self._receive_task is not None:
            await self.cancel_task(self._receive_task)
            self._receive_task = None
        await self._disconnect_websocket()

    async def _connect_websocket(self) -> None:
        if self._session is not None:
            return
        client = self._given_client or self._own_client
        if client is None:
            client = AsyncClient(self._target, tls_ca=self._tls_ca, token=self._token)
            self._own_client = client
        session = client.session(self.session_options())
        try:
            await session.open()
        except VoxrelayError as error:
            await session.__aexit__(None, None, None)
            await self._report_voxrelay_error(error)
            return
        self._session = session
        self._turns, self._opened_turns, self._open_turn = {}, 0, None
        await self._call_event_handler("on_connected")

    async def _disconnect_websocket(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await self.stop_all_metrics()  # type: ignore[no-untyped-call]
            await session.__aexit__(None, None, None)  # cancels the call
            await self._call_event_handler("on_disconnected")

    async def _verify_connection(self) -> bool:
        return self._session is not None

    async def _close_own_client(self) -> None:
        client, self._own_client = self._own_client, None
        if client is not None:
            await client.close()

    async def _report_voxrelay_error(self, error: VoxrelayError) -> None:
        await self.push_error(
            error_msg=f"voxrelay: {error}",
            exception=error,
            force_treat_as_permanent=error.code in PERMANENT,
        )

    # What goes out.

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame | None, None]:
        """Send `text` as the next chunk of `context_id`'s turn; its audio arrives on
        the call's receive task."""
        if self._session is None:
            await self._connect()
        session = self._session
        if session is None:
            yield TTSStoppedFrame(context_id=context_id)
            return
        try:
            if self._open_turn is not None and self._turns[self._open_turn].context_id != (
                context_id
            ):
                # Another context (a TTSSpeakFrame inside an LLM response) speaks now:
                # one call speaks one turn at a time.
                await self._end_turn()
            if self._open_turn is None:
                self._opened_turns += 1
                self._open_turn = self._opened_turns
                self._turns[self._open_turn] = _Turn(context_id)
            await session.send_text(text)
            await self.start_tts_usage_metrics(text)
        except VoxrelayError as error:
            # The receive task sees the call end too, and reconnects.
            await self._report_voxrelay_error(error)
            yield TTSStoppedFrame(context_id=context_id)
            return
        yield None

    async def flush_audio(self, context_id: str | None = None) -> None:
        """The end of a response (or of a `TTSSpeakFrame`): `turn_done`."""
        if self._open_turn is None:
            return
        if context_id is None or self._turns[self._open_turn].context_id == context_id:
            await self._end_turn()

    async def _end_turn(self) -> None:
        self._open_turn = None
        if self._session is not None:
            try:
                await self._session.turn_done()
            except VoxrelayError as error:
                await self._report_voxrelay_error(error)

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Follow the output transport's speaking runs, for the played position."""
        if isinstance(frame, BotStartedSpeakingFrame) and direction == FrameDirection.UPSTREAM:
            self._run = _Run(time.monotonic())
            playing = self._audio_context_manager.playing_context_id
            if playing is not None:
                self._run.contexts.append(playing)
        elif isinstance(frame, BotStoppedSpeakingFrame) and direction == FrameDirection.UPSTREAM:
            self._run = None
        await super().process_frame(frame, direction)

    async def push_frame(
        self, frame: Frame, direction: FrameDirection = FrameDirection.DOWNSTREAM
    ) -> None:
        """Count each context's audio handed to the transport in the current run."""
        if isinstance(frame, TTSAudioRawFrame) and frame.context_id:
            context = frame.context_id
            self._handed[context] = self._handed.get(context, 0) + len(frame.audio) // 2
            run = self._run
            if run is not None and (not run.contexts or run.contexts[-1] != context):
                run.contexts.append(context)
        await super().push_frame(frame, direction)

    def played_position(self) -> tuple[int, int]:
        """(turn, samples of it played) where the listener is now, or (0, 0) when the
        transport has not said when it started playing."""
        run = self._run
        if run is None or not run.contexts:
            return 0, 0
        played = round((time.monotonic() - run.started_at) * self.sample_rate)
        context = run.contexts[-1]
        for context in run.contexts:
            handed = self._handed.get(context, 0)
            if played < handed or context == run.contexts[-1]:
                break
            played -= handed
        # Within the context, its turns one after the other.
        turns = [n for n, turn in self._turns.items() if turn.context_id == context]
        for number in turns:
            if played < self._turns[number].samples or number == turns[-1]:
                return number, max(played, 0)
            played -= self._turns[number].samples
        return 0, 0

    async def _handle_interruption(
        self, frame: InterruptionFrame, direction: FrameDirection
    ) -> None:
        # Where the listener stopped, before the interruption drops the contexts.
        turn, played = self.played_position()
        in_flight = any(not t.ended for t in self._turns.values())
        await super()._handle_interruption(frame, direction)
        self._run = None
        if self._session is not None and in_flight:
            self._open_turn = None  # text after a cancel starts a new turn
            try:
                await self._session.cancel(played_samples=played, turn=turn)
            except VoxrelayError as error:
                await self._report_voxrelay_error(error)

    # What comes back.

    async def _receive_messages(self) -> None:
        session = self._session
        if session is None:
            return
        try:
            async for event in session:
                await self._handle_event(event)
        except VoxrelayError as error:
            if error.code in PERMANENT:
                await self._report_voxrelay_error(error)
                self._disconnecting = True  # no new call would fare better
                return
            raise
        finally:
            if self._session is session:
                self._session = None
                await session.__aexit__(None, None, None)

    async def _handle_event(self, event: object) -> None:
        if isinstance(event, Audio):
            # After a resume on another replica, the cut segment's start comes again.
            event = event.unrepeated()
            turn = self._turns.get(event.turn)
            if turn is None:
                return
            turn.samples = event.offset_samples + event.num_samples
            if self.audio_context_available(turn.context_id):
                await self.stop_ttfb_metrics()
                await self.append_to_audio_context(
                    turn.context_id,
                    TTSAudioRawFrame(
                        audio=event.data,
                        sample_rate=event.sample_rate_hz,
                        num_channels=1,
                        context_id=turn.context_id,
                    ),
                )
        elif isinstance(event, Words):
            turn = self._turns.get(event.turn)
            if turn is None or not self.audio_context_available(turn.context_id):
                return
            # A context spoken over several turns: its clock runs on across them.
            before = sum(
                t.samples
                for n, t in self._turns.items()
                if n < event.turn and t.context_id == turn.context_id
            )
            rate = self.started.sample_rate_hz if self.started else self.sample_rate
            await self.add_word_timestamps(
                [(word.text, (before + word.start_samples) / rate) for word in event.words],
                turn.context_id,
            )
        elif isinstance(event, TurnEnded):
            await self._turn_ended(event)
        elif isinstance(event, SessionStarted):
            self.started = event

    async def _turn_ended(self, event: TurnEnded) -> None:
        turn = self._turns.get(event.turn)
        if turn is None:
            return
        turn.ended = True
        await self._call_event_handler(
            "on_turn_spoken", turn.context_id, event.spoken_text, event.cancelled
        )
        last = max(n for n, t in self._turns.items() if t.context_id == turn.context_id)
        still_open = self._open_turn is not None and self._open_turn == event.turn
        if event.turn == last and not still_open and self.audio_context_available(turn.context_id):
            await self.append_to_audio_context(
                turn.context_id, TTSStoppedFrame(context_id=turn.context_id)
            )
            await self.remove_audio_context(turn.context_id)

    async def _update_settings(self, delta: TTSSettings) -> dict[str, Any]:  # type: ignore[override]
        """A new voice or language takes a new call (a session's voice is fixed)."""
        changed = await super()._update_settings(delta)
        if changed.keys() & {"voice", "language"} and self._session is not None:
            await self._disconnect()
            await self._connect()
        return changed
