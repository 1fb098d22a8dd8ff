"""The OpenAI-compatible speech API: `POST /v1/audio/speech`, `GET /v1/models` and
`GET /v1/audio/voices`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from voxrelay_server.http.listener import HttpContext, HttpRoutes

MODELS = ("voxrelay", "tts-1", "tts-1-hd", "gpt-4o-mini-tts")
"""Model names a request may give; all speak the same way (the voice decides)."""


def add_routes(routes: HttpRoutes) -> None:
    """Add the speech API's routes."""
    context = routes.context

    async def models(request: web.Request) -> web.Response:
        return web.json_response(models_body())

    async def voices(request: web.Request) -> web.Response:
        return web.json_response(voices_body(context))

    routes.add("GET", "/v1/models", models)
    routes.add("GET", "/v1/audio/voices", voices)


def models_body() -> dict[str, Any]:
    """`GET /v1/models`: OpenAI's list of models."""
    return {
        "object": "list",
        "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": "voxrelay"} for name in MODELS
        ],
    }


def voices_body(context: HttpContext) -> dict[str, Any]:
    """`GET /v1/audio/voices`: every voice the server offers."""
    service = context.runner.service.get()
    default = service.catalog.default_voice
    return {
        "object": "list",
        "data": [
            {
                "id": voice.name,
                "object": "voice",
                "engine": voice.engine,
                "language_codes": list(voice.language_codes),
                "sample_rate_hz": voice.native_sample_rate_hz,
                "default": voice.name == default,
            }
            for voice in service.voices()
        ],
    }
