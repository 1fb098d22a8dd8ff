"""The page at `/` in a real headless browser (Debian's chromium, driven by playwright)
against a real `voxrelay serve --http-listen` with the piper voice and a token: it loads
under its Content-Security-Policy, lists the voices, speaks a text as it arrives (audio
frames and word events in order), and a barge-in yields the server's `spoken_text`;
then a sample reply streamed word by word, barged in too. Skipped, saying why, where no
chromium is installed (`apt-get install chromium`; `.ci/run` installs it)."""

from __future__ import annotations

import re
import shutil
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.processes import ServeProcess, free_port, running_serve, user_env

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TOKEN = "page-test-token"
TEXT = (
    "Good morning. This reply is spoken through a WebSocket, one audio frame at a "
    "time, and every word is highlighted as it plays. It goes on long enough to be "
    "interrupted in the middle, which is what the test does. "
)
BROWSER_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",  # Web Audio plays without a real click
]

pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no chromium browser installed (Debian: apt-get install chromium; .ci/run "
    "installs it): the page's browser test needs one",
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServeProcess, str]]:
    """A real server with the piper voice, a token, and its HTTP listener's base URL."""
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with running_serve(
        ["--http-listen", f"127.0.0.1:{port}", "--engines", "piper"],
        log,
        user_env(VOXRELAY_AUTH_TOKENS=TOKEN),
        metadata=[("authorization", f"Bearer {TOKEN}")],
    ) as process:
        yield process, f"http://127.0.0.1:{port}"


@asynccontextmanager
async def browser(profile: Path, *, bypass_csp: bool) -> AsyncIterator[Any]:
    """A page in a fresh chromium profile (the system's browser, never a download)."""
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM,
            args=BROWSER_ARGS,
            headless=True,
            bypass_csp=bypass_csp,
        )
        try:
            yield context.pages[0] if context.pages else await context.new_page()
        finally:
            await context.close()


async def load_voices(page: Any, base: str) -> None:
    await page.goto(f"{base}/")
    await page.fill("#token", TOKEN)
    await page.click("#load-voices")
    await page.locator("#voice option[value='piper/en_US-joe-medium']").wait_for(state="attached")


async def test_the_page_runs_under_its_content_security_policy(
    server: tuple[ServeProcess, str], tmp_path: Path
) -> None:
    """Its own inline script and style run (the voice list fills), and it may open its
    socket (`connect-src 'self'` covers ws:// of its own origin): audio arrives."""
    _, base = server
    async with browser(tmp_path / "profile", bypass_csp=False) as page:
        messages: list[str] = []
        page.on("console", lambda message: messages.append(message.text))
        await load_voices(page, base)
        assert await page.locator("#voice option").count() >= 1
        await page.fill("#text", "Hello there. ")
        await page.click("#speak")
        # Waited for through the page's text: a wait evaluating a condition needs eval.
        await page.locator("#counts", has_text=re.compile(r"^[1-9]\d* audio frames")).wait_for()
    assert not [m for m in messages if "Content Security Policy" in m], messages


async def test_the_page_speaks_highlights_words_and_barges_in(
    server: tuple[ServeProcess, str], tmp_path: Path
) -> None:
    _, base = server
    # playwright's waits evaluate their conditions as strings, which the page's policy
    # (no eval) refuses: this browser ignores the policy, tested on its own above.
    async with browser(tmp_path / "profile", bypass_csp=True) as page:
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        await load_voices(page, base)
        await page.fill("#text", TEXT)
        await page.click("#speak")
        # Audio frames and words arrive and play; a word is highlighted as it is spoken.
        await page.wait_for_function("voxrelay.frames >= 2 && voxrelay.words >= 3")
        await page.locator("#transcript mark").wait_for()
        await page.wait_for_function(
            "voxrelay.position && voxrelay.position.samples > voxrelay.sampleRateHz * 1.5"
        )
        await page.screenshot(path=str(tmp_path / "speaking.png"), full_page=True)
        await page.click("#bargein")
        await page.wait_for_function("voxrelay.spokenText !== null")
        await page.screenshot(path=str(tmp_path / "barged-in.png"), full_page=True)
        first: dict[str, Any] = await page.evaluate(
            """() => ({
                log: voxrelay.log, bargeIns: voxrelay.bargeIns, spokenText: voxrelay.spokenText,
                ttfaMs: voxrelay.ttfaMs, rate: voxrelay.sampleRateHz, voice: voxrelay.voice,
                shown: document.querySelector("#spoken").textContent,
                ttfaShown: document.querySelector("#ttfa").textContent,
            })"""
        )
        # Then a reply streamed word by word on the same socket, barged in once it plays.
        await page.click("#sample")
        await page.wait_for_function(
            "voxrelay.position && voxrelay.position.turn === 2"
            " && voxrelay.position.samples > voxrelay.sampleRateHz"
        )
        await page.click("#bargein")
        await page.wait_for_function("voxrelay.spokenText !== null")
        second: dict[str, Any] = await page.evaluate(
            "() => ({spokenText: voxrelay.spokenText, sample: voxrelay.turns[2].text,"
            " bargeIns: voxrelay.bargeIns, log: voxrelay.log})"
        )
        assert not errors
    assert first["voice"] == "piper/en_US-joe-medium"
    check_order(first["log"])
    # The server's account of what was heard: a prefix of the text, cut at a word's end
    # near where playback stopped (not all of it, not nothing).
    spoken = first["spokenText"]
    played = first["bargeIns"][0]["playedSamples"]
    assert first["bargeIns"][0]["turn"] == 1 and played > first["rate"] * 1.5
    assert spoken and TEXT.startswith(spoken) and len(spoken) < len(TEXT.rstrip())
    assert spoken[-1].isalnum() or spoken[-1] in ".,"
    assert spoken in first["shown"]
    assert 0 < first["ttfaMs"] < 10_000 and "ms" in first["ttfaShown"]
    turn_two = [entry for entry in second["log"] if entry.get("turn") == 2]
    assert turn_two[0]["kind"] == "turn_started"
    assert turn_two[-1] == {"kind": "turn_ended", "turn": 2, "cancelled": True}
    assert second["bargeIns"][1]["turn"] == 2
    assert second["spokenText"] and second["sample"].startswith(second["spokenText"])


def check_order(log: list[dict[str, Any]]) -> None:
    """The stream's rules as the page received them: session_started first; the turn's
    start, then audio in order with each word announced before the audio of its first
    sample; the cancelled turn's end last."""
    assert log[0] == {"kind": "session_started"}
    assert log[1] == {"kind": "turn_started", "turn": 1, "cancelled": False}
    assert log[-1] == {"kind": "turn_ended", "turn": 1, "cancelled": True}
    every_start = [start for entry in log if entry["kind"] == "words" for start in entry["starts"]]
    announced: list[int] = []
    offset = 0
    frames = 0
    for entry in log[2:-1]:
        if entry["kind"] == "words":
            announced.extend(entry["starts"])
            continue
        assert entry["kind"] == "audio" and entry["turn"] == 1
        assert entry["offset"] == offset  # in order, nothing missing
        end = offset + entry["samples"]
        # Every word whose first sample is in this frame was announced before it.
        assert all(start in announced for start in every_start if offset <= start < end)
        offset = end
        frames += 1
    assert frames >= 2 and announced
    assert max(announced) < offset  # no word announced for audio that was not sent


async def test_without_real_time_pace_the_page_cuts_an_ended_turn_itself(
    server: tuple[ServeProcess, str], tmp_path: Path
) -> None:
    """Audio made faster than it plays: the turn has ended (all of it sent) long before
    the barge-in, so the server ignores the cancel naming it; the page cuts the text at
    the last word played, from the word timing (the README's recipe)."""
    _, base = server
    async with browser(tmp_path / "profile", bypass_csp=True) as page:
        await load_voices(page, base)
        await page.uncheck("#realtime")
        await page.fill("#text", TEXT)
        await page.click("#speak")
        await page.wait_for_function(
            "voxrelay.turns[1] && voxrelay.turns[1].ended && voxrelay.position"
            " && voxrelay.position.samples > voxrelay.sampleRateHz * 1.5"
        )
        await page.click("#bargein")
        result: dict[str, Any] = await page.evaluate(
            "() => ({spokenText: voxrelay.spokenText, bargeIns: voxrelay.bargeIns,"
            " words: voxrelay.turns[1].words, cancelled: voxrelay.turns[1].cancelled,"
            " shown: document.querySelector('#spoken').textContent})"
        )
    played = result["bargeIns"][0]["playedSamples"]
    heard_end = max(
        word["offset"] + len(word["text"]) for word in result["words"] if word["end"] <= played
    )
    assert result["spokenText"] == TEXT[:heard_end]
    assert 0 < heard_end < len(TEXT.rstrip())
    assert result["cancelled"] and "cut by this page" in result["shown"]


async def test_the_page_tells_its_user_to_type_the_token(
    server: tuple[ServeProcess, str], tmp_path: Path
) -> None:
    """Without the token, or with a wrong one, the page says what its user can do (type
    it in the Token field), not which header or first message a program should send;
    once the refused socket has closed, Barge in is disabled (nothing to interrupt)."""
    _, base = server
    async with browser(tmp_path / "profile", bypass_csp=True) as page:
        await page.goto(f"{base}/")
        error = page.locator("#error")
        await error.filter(has_text="Token field").wait_for()
        assert "header" not in await error.text_content()
        await page.fill("#text", "Hello there. ")
        await page.click("#speak")
        await page.wait_for_function("voxrelay.closeCode === 4016")
        shown = await error.text_content()
        assert shown.startswith("UNAUTHENTICATED: ") and "Token field" in shown, shown
        assert "first message" not in shown and "not accepted" not in shown
        assert await page.locator("#bargein").is_disabled()
        # The refused turn's text is shown as not spoken, not as if its audio were coming.
        assert await page.locator("#transcript p.cancelled span.unheard").text_content() == (
            "Hello there. "
        )
        await page.fill("#token", "not-the-token")
        await page.click("#load-voices")
        await error.filter(has_text="not accepted").wait_for()
        assert "Token field" in await error.text_content()
        await page.screenshot(path=str(tmp_path / "no-token.png"), full_page=True)
