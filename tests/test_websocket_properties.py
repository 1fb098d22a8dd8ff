"""Property test of the WebSocket stream: random sequences of messages (requests, text of
any kind, messages that are not requests, binary messages, authorization messages) and
endings (`end`, `end` then more, the client closing) against a real server. Whatever is
sent, the server does not crash, lets go of the session and stops its synthesis, and
the socket's messages keep every rule of `Stream` (the checker of the gRPC property
test) and end well-formed: SESSION_ENDED and close 1000, or the error, SESSION_ENDED and
close 4000 + its code with the status's name as the reason."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.test_properties import (
    TEXTS,
    Recorder,
    Sent,
    check_stream,
    domain_event,
    recorded_tone_service,
)
from tests.websockets import Socket
from voxrelay_server.app import RunningParts, create_server_parts
from voxrelay_server.config import ServerSettings
from voxrelay_server.dispatcher import SessionLimits
from voxrelay_server.engines.tone import ToneEngine
from voxrelay_server.errors import ErrorCode
from voxrelay_server.service import SpeechService

NOT_A_STRING = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.just([]), st.just({})
)
NOT_REQUESTS = st.one_of(
    st.sampled_from(["nope", "[]", "1", '"text"', "{", '{"end": 1}', '{"authorization": 5}']),
    # Unknown fields, two fields of the oneof, wrong types, out-of-range numbers.
    st.dictionaries(
        st.sampled_from(["x", "Text", "turn-done", "speech"]), st.integers(), min_size=1
    ).map(json.dumps),
    st.just(json.dumps({"text": "a", "turn_done": {}})),
    NOT_A_STRING.map(lambda value: json.dumps({"text": value})),
    st.sampled_from([{"turn": -1}, {"played_samples": "x"}, {"turn": 1.5}, {"nope": 1}]).map(
        lambda cancel: json.dumps({"cancel": cancel})
    ),
    st.sampled_from(["turn_done", "cancel", "config"]).map(lambda key: json.dumps({key: None})),
)
MESSAGE = st.one_of(
    st.tuples(st.just("text"), TEXTS),
    st.tuples(st.just("turn_done"), st.none()),
    st.tuples(st.just("cancel"), st.tuples(st.integers(0, 4), st.integers(0, 40_000))),
    st.tuples(st.just("config"), st.none()),  # allowed only first: INVALID_ARGUMENT later
    st.tuples(st.just("empty"), st.none()),  # {}: INVALID_ARGUMENT
    st.tuples(st.just("authorization"), st.none()),  # ignored first (no tokens), else bad
    st.tuples(st.just("not_a_request"), NOT_REQUESTS),
    st.tuples(st.just("binary"), st.binary(max_size=8)),
)
ENDINGS = st.sampled_from(["end", "end_then_more", "client_close"])


@contextlib.asynccontextmanager
async def served() -> AsyncIterator[tuple[RunningParts, SpeechService, ToneEngine, list[Recorder]]]:
    service, tone, recorders = recorded_tone_service(SessionLimits(max_segment_chars=40))
    settings_ = ServerSettings(
        listen="127.0.0.1:0",
        http_listen="127.0.0.1:0",
        engines=("tone",),
        start_timeout_s=5.0,
        send_timeout_s=5.0,
    )
    parts = create_server_parts(settings_, service)
    await parts.start()
    try:
        yield parts, service, tone, recorders
    finally:
        await parts.stop(0)


def wire(kind: str, value: Any) -> str | bytes:
    """The message sent for one generated input."""
    if kind == "text":
        return json.dumps({"text": value})
    if kind == "turn_done":
        return json.dumps({"turn_done": {}})
    if kind == "cancel":
        turn, played = value
        return json.dumps({"cancel": {"turn": turn, "played_samples": played}})
    if kind == "config":
        return json.dumps({"config": {}})
    if kind == "empty":
        return "{}"
    if kind == "authorization":
        return json.dumps({"authorization": "Bearer anything"})
    if kind == "binary":
        assert isinstance(value, bytes)
        return value
    assert isinstance(value, str)
    return value


async def drive(leading: list[str], inputs: list[tuple[str, Any]], ending: str) -> None:
    async with (
        served() as (parts, service, tone, recorders),
        aiohttp.ClientSession() as client,
    ):
        assert parts.http is not None
        url = f"http://127.0.0.1:{parts.http.port}/v1/stream"
        async with client.ws_connect(url) as ws:
            socket = Socket(ws)
            sent = Sent()
            bad = False  # a message the session refuses was sent (and read)
            maybe_bad = False  # one that may or may not be read before the socket closes
            first = True  # no request read yet: authorization is ignored, config allowed
            reading = asyncio.create_task(socket.rest())
            messages = [(kind, None) for kind in leading] + inputs
            for kind, value in messages:
                message = wire(kind, value)
                try:
                    if isinstance(message, bytes):
                        await ws.send_bytes(message)
                    else:
                        await ws.send_str(message)
                except ConnectionError:
                    break  # the server closed the socket (its reason is in the messages)
                if bad:
                    continue
                if first and kind in ("authorization", "config"):
                    first = kind == "authorization"
                    continue
                first = False
                if kind == "text" and value:
                    sent.text(value)
                elif kind in ("turn_done", "cancel"):
                    sent.end_turn()
                else:
                    bad = True
            if ending == "client_close":
                await ws.close()
            else:
                with contextlib.suppress(ConnectionError):
                    await ws.send_str('{"end": {}}')
                    if ending == "end_then_more":
                        await ws.send_str('{"text": "more. "}')
                        maybe_bad = not bad
            closed = await reading
        responses = closed.responses
        started = [i for i, r in enumerate(responses) if r.HasField("session_started")]
        assert started == [0] or (started == [] and (not responses or responses[0].error.code))
        events = [domain_event(response) for response in responses[len(started) :]]
        segments = recorders[0].segments if recorders else {}
        complete = ending != "client_close"
        failure = check_stream(events, segments, sent, tone, complete=complete)
        if complete:
            # Well-formed to the end: the close code says how the session ended.
            if failure is None:
                assert not bad
                assert (closed.close_code, closed.statuses) == (1000, [])
            else:
                assert bad or maybe_bad
                code = failure.error.code.value
                assert code == ErrorCode.INVALID_ARGUMENT
                assert closed.close_code == 4000 + code
                assert closed.statuses == [closed.close_reason] == ["INVALID_ARGUMENT"]
        # Whatever the ending, the server lets go of the session and stops its synthesis.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while service.active_sessions:
            assert loop.time() < deadline, "the server did not let go of the session"
            await asyncio.sleep(0.005)
        await asyncio.wait_for(tone.idle.wait(), 5)
        # And it still serves.
        async with client.ws_connect(url) as ws:
            await ws.send_str('{"text": "Still here. "}')
            await ws.send_str('{"end": {}}')
            after = await Socket(ws).rest()
        assert after.close_code == 1000


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    leading=st.lists(st.sampled_from(["authorization", "config"]), max_size=2),
    inputs=st.lists(MESSAGE, max_size=12),
    ending=ENDINGS,
)
def test_any_messages_end_in_a_well_formed_close(
    leading: list[str], inputs: list[tuple[str, Any]], ending: str
) -> None:
    asyncio.run(drive(leading, inputs, ending))
