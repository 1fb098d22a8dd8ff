"""Streamed text as a voice agent hears it: replies fed token by token at an LLM's pace.

Each reply of `bench/corpus/replies.json` (assistant replies: confirmations, answers of
several sentences, lists with some markdown, prices, times, abbreviations, questions) is
cut into word pieces (each word with its leading whitespace, long words in two) and sent
at 20, 40 and 80 tokens/s, then `turn_done`, on one open session per mode of a
`voxrelay serve` process (default settings, `--engines piper,espeak`), turns one after
the other. The modes run side by side, interleaved reply by reply: voxrelay's default
segmentation (the first clause of a turn first), voxrelay with `segmentation="sentences"`
and, for piper, the in-process reference (`StreamedAudioResult` from openai-agents driven
as `VoicePipeline` drives it, with a `TTSModel` speaking the same piper voice) fed the
same pieces at the same pace.

Per pace, voice and mode: the time from the first piece sent to the first audio (p50,
p90); the worst silence a listener playing the audio at real time from its first audio
would hear mid-turn; the segments each turn was cut into; the audio's length. The floor
of a reply is the time its pieces take to complete its first clause of at least
`MIN_CLAUSE_WORDS` words (a clause mark or a sentence end, as voxrelay's splitter reads
them) plus the engine's own first audio for that clause called directly at its fastest.
Intelligibility: the piper audio at 40 tokens/s of both voxrelay modes transcribed by
pocketsphinx (its bundled en-US model), word error rate against the reply's text.

`python -m bench.voice_agent [--quick]` runs it alone; the suite runs it as a section.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from agents.voice import TTSModel, TTSModelSettings

from bench.first_audio import espeak_direct, piper_direct
from bench.real_voice import ESPEAK, PIPER
from bench.reference import reference_result
from bench.report import Goal, Section, median, percentile, run_alone
from bench.servers import start_server_process, stop_server_process
from bench.ttfa import ReferenceConsumer
from voxrelay import AsyncClient, AsyncSession, Audio, Event, TurnEnded
from voxrelay_server.engines.piper_engine import bundled_joe_voice
from voxrelay_server.splitter import SentenceSplitter

if TYPE_CHECKING:
    from piper import PiperVoice

CORPUS = Path(__file__).resolve().parent / "corpus" / "replies.json"
PACES = (20, 40, 80)
"""Tokens per second."""
FULL_PACE = 40
"""The pace that gets the whole corpus, the goals and the transcripts."""
SUBSET_EVERY = 4
"""At the other paces, every fourth reply of the corpus."""
QUICK_REPLIES = (3, 13, 30)
"""The replies of a quick run (indices into the corpus) at `FULL_PACE`; the first two
at the other paces."""
WARMUP_REPLIES = (1, 8)
"""Turns spoken by every mode before the measured ones: piper's first runs are slow."""
QUICK_WARMUP_REPLIES = (1,)
LONG_WORD = 8
"""Words of more characters than this are sent as two pieces."""
MIN_CLAUSE_WORDS = 4
LATE_SHOWN = 12
"""Turns with a gap listed by name in the notes, at most."""

FIRST_CLAUSE = "voxrelay first clause (default)"
SENTENCES = "voxrelay sentences"
REFERENCE = "reference StreamedAudioResult"

FIRST_AUDIO_RATIO = 0.4
"""Goal: first-clause median first audio at most this times the sentences median."""
FLOOR_RATIO = 1.3
"""Goal: first-clause median first audio at most this times the floor median."""
P90_RATIO = 0.5
"""Goal: first-clause p90 first audio at most this times the sentences p90."""
GAP_LIMIT_S = 0.050
"""Goal: no mid-turn silence longer than this."""
WER_MARGIN = 0.02
"""Goal: first-clause word error rate at most this above the sentences one."""

_PIECE = re.compile(r"\s*\S+")


def load_replies() -> list[str]:
    """The corpus: one assistant reply per entry."""
    replies = json.loads(CORPUS.read_text(encoding="utf-8"))
    assert isinstance(replies, list) and all(isinstance(r, str) for r in replies)
    return replies


def pieces(text: str) -> list[str]:
    """`text` as an LLM streams it: each word with the whitespace before it, a word of
    more than `LONG_WORD` characters in two pieces."""
    out = []
    for piece in _PIECE.findall(text):
        word = piece.lstrip()
        if len(word) > LONG_WORD:
            cut = len(piece) - len(word) + len(word) // 2
            out += [piece[:cut], piece[cut:]]
        else:
            out.append(piece)
    return out


def first_clause(tokens: Sequence[str]) -> tuple[int, str]:
    """The piece whose arrival completes the first clause of at least `MIN_CLAUSE_WORDS`
    words, read by voxrelay's own splitter (without its stall rule), and that clause;
    the last piece and the whole text when there is no such clause before the end."""
    splitter = SentenceSplitter(0, sum(map(len, tokens)) + 1, MIN_CLAUSE_WORDS)
    for index, token in enumerate(tokens):
        if segments := splitter.feed(token):
            return index, segments[0]
    return len(tokens) - 1, "".join(tokens).strip()


def worst_gap(arrivals: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """The longest silence mid-turn for a listener who starts playing at the first audio
    and plays each message at real time as soon as it is there and the audio before it
    has played, and the seconds of audio played before it: `arrivals` are (arrival time,
    seconds of audio) in order."""
    if not arrivals:
        return 0.0, 0.0
    plays_out, worst, before, played = arrivals[0][0], 0.0, 0.0, 0.0
    for arrived, seconds in arrivals:
        starts = max(plays_out, arrived)
        if starts - plays_out > worst:
            worst, before = starts - plays_out, played
        plays_out = starts + seconds
        played += seconds
    return worst, before


def words(text: str) -> list[str]:
    """Lowercase words with punctuation and markdown stripped; numbers as they are
    ("3:30", "1,284.16"), hyphenated words as separate words."""
    out = []
    for raw in text.lower().replace("-", " ").replace("\u2014", " ").split():
        if any(c.isdigit() for c in raw):
            word = raw.strip("$*_`#.,;:!?()\"'")
        else:
            word = re.sub(r"[^\w']", "", raw).strip("'")
        if word:
            out.append(word)
    return out


def word_errors(reference: Sequence[str], hypothesis: Sequence[str]) -> int:
    """Word-level edit distance: substitutions, deletions and insertions."""
    previous = list(range(len(hypothesis) + 1))
    for i, word in enumerate(reference, 1):
        current = [i]
        for j, heard in enumerate(hypothesis, 1):
            current.append(
                min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (word != heard))
            )
        previous = current
    return previous[-1]


@dataclass
class Turn:
    """One reply spoken in one mode."""

    first_audio_s: float
    worst_gap_s: float
    gap_after_s: float
    """Seconds of the turn's audio played before its worst gap."""
    segments: int
    audio_s: float
    first_segment_s: float
    """Seconds of audio in the turn's first segment (voxrelay; 0 for the reference)."""
    audio: npt.NDArray[np.int16] | None = None
    """The turn's samples at `rate_hz`, kept for transcription."""
    rate_hz: int = 0
    reply: int = -1
    """The reply's index in the corpus."""


@dataclass
class Runs:
    """Every measured turn, by (voice, pace, mode), and the floors by (voice, pace)."""

    turns: dict[tuple[str, int, str], list[Turn]] = field(default_factory=dict)
    floors: dict[tuple[str, int], list[float]] = field(default_factory=dict)
    texts: list[str] = field(default_factory=list)
    """The replies at `FULL_PACE`, in the order of the piper turns kept for transcripts."""

    def add(self, voice: str, pace: int, mode: str, turn: Turn) -> None:
        self.turns.setdefault((voice, pace, mode), []).append(turn)


async def _at(moment: float) -> None:
    delay = moment - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)


def _turn(
    started: float,
    arrivals: list[tuple[float, float]],
    segments: int,
    first_segment_s: float,
    chunks: list[npt.NDArray[np.int16]],
    rate_hz: int,
    keep: bool,
) -> Turn:
    if not arrivals:
        raise RuntimeError("a turn had no audio")
    return Turn(
        arrivals[0][0] - started,
        *worst_gap(arrivals),
        segments,
        sum(seconds for _, seconds in arrivals),
        first_segment_s,
        np.concatenate(chunks) if keep else None,
        rate_hz,
    )


async def voxrelay_turn(
    session: AsyncSession,
    events: AsyncIterator[Event],
    tokens: Sequence[str],
    pace: int,
    keep: bool,
) -> Turn:
    """Send `tokens` at `pace` per second, then `turn_done`; read the turn's audio as it
    comes, timing it from the first piece sent."""
    started = time.perf_counter()

    async def send() -> None:
        for index, token in enumerate(tokens):
            await _at(started + index / pace)
            await session.send_text(token)
        await session.turn_done()

    sending = asyncio.create_task(send())
    arrivals: list[tuple[float, float]] = []
    segments: set[int] = set()
    chunks: list[npt.NDArray[np.int16]] = []
    rate_hz, first_segment_s = 0, 0.0
    async for event in events:
        if isinstance(event, Audio):
            arrivals.append((time.perf_counter(), event.duration_s))
            segments.add(event.segment)
            if event.segment == min(segments):
                first_segment_s += event.duration_s
            rate_hz = event.sample_rate_hz
            if keep:
                chunks.append(event.samples.astype(np.int16))
        elif isinstance(event, TurnEnded):
            break
    await sending
    return _turn(started, arrivals, len(segments), first_segment_s, chunks, rate_hz, keep)


class PiperTTSModel(TTSModel):
    """The reference's TTS model for the same piper voice: `PiperVoice.synthesize` run
    in a thread, each chunk (a sentence) handed on as it is made."""

    def __init__(self, voice: PiperVoice) -> None:
        self.voice = voice
        self.runs = 0

    @property
    def model_name(self) -> str:
        return "piper"

    async def run(self, text: str, settings: TTSModelSettings) -> AsyncIterator[bytes]:
        self.runs += 1
        chunks = iter(self.voice.synthesize(text))
        while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
            yield chunk.audio_int16_bytes


async def reference_turn(
    consumer: ReferenceConsumer, model: PiperTTSModel, tokens: Sequence[str], pace: int
) -> Turn:
    """The same turn through the reference: `_add_text` per piece at `pace`, then
    `_turn_done`, as `VoicePipeline` does, with `stream()` read by `consumer`."""
    result = consumer.result
    audio, lifecycle = consumer.mark()
    runs = model.runs
    started = time.perf_counter()
    for index, token in enumerate(tokens):
        await _at(started + index / pace)
        await result._add_text(token)
    await result._turn_done()  # type: ignore[no-untyped-call]
    await consumer.wait_lifecycle("turn_ended", lifecycle)
    rate = model.voice.config.sample_rate
    arrivals = [
        (at, samples / rate)
        for at, samples in zip(
            consumer.audio_times[audio:], consumer.audio_samples[audio:], strict=True
        )
    ]
    return _turn(started, arrivals, model.runs - runs, 0.0, [], rate, False)


def plan(replies: Sequence[str], quick: bool) -> dict[int, list[int]]:
    """The replies (indices) measured at each pace."""
    if quick:
        return {
            pace: list(QUICK_REPLIES if pace == FULL_PACE else QUICK_REPLIES[:2]) for pace in PACES
        }
    every = list(range(len(replies)))
    return {pace: every if pace == FULL_PACE else every[::SUBSET_EVERY] for pace in PACES}


async def measure_voice(
    client: AsyncClient,
    voice: str,
    direct: Callable[[str], float],
    reference: PiperTTSModel | None,
    replies: Sequence[str],
    chosen: dict[int, list[int]],
    runs: Runs,
    quick: bool,
) -> None:
    """Every pace for one voice: one session per mode, modes interleaved reply by reply
    (each first in turn), the floor's engine time measured beside each reply."""
    async with (
        client.session(voice=voice) as first_clause_session,
        client.session(voice=voice, segmentation="sentences") as sentences_session,
    ):
        first_events = first_clause_session.events()
        sentence_events = sentences_session.events()
        consumer = ReferenceConsumer(reference_result(reference)) if reference else None

        async def speak(mode: str, tokens: Sequence[str], pace: int, keep: bool) -> Turn:
            if mode == FIRST_CLAUSE:
                return await voxrelay_turn(first_clause_session, first_events, tokens, pace, keep)
            if mode == SENTENCES:
                return await voxrelay_turn(sentences_session, sentence_events, tokens, pace, keep)
            assert consumer is not None and reference is not None
            return await reference_turn(consumer, reference, tokens, pace)

        modes = [FIRST_CLAUSE, SENTENCES] + ([REFERENCE] if reference else [])
        for index in QUICK_WARMUP_REPLIES if quick else WARMUP_REPLIES:
            direct(replies[index])
            for mode in modes:
                await speak(mode, pieces(replies[index]), FULL_PACE, False)
        for pace in PACES:
            began = time.perf_counter()
            for count, index in enumerate(chosen[pace]):
                tokens = pieces(replies[index])
                last, clause = first_clause(tokens)
                runs.floors.setdefault((voice, pace), []).append(last / pace + direct(clause))
                keep = voice == PIPER and pace == FULL_PACE
                if keep:
                    runs.texts.append(replies[index])
                shift = count % len(modes)
                for mode in modes[shift:] + modes[:shift]:
                    turn = await speak(mode, tokens, pace, keep)
                    turn.reply = index
                    runs.add(voice, pace, mode, turn)
            took = time.perf_counter() - began
            print(f"   {voice} at {pace} tokens/s: {took:.0f} s", file=sys.stderr, flush=True)
        if consumer is not None:
            await consumer.result._done()  # type: ignore[no-untyped-call]
            await consumer.task


def transcribe(turns: Sequence[Turn]) -> list[list[str]]:
    """What pocketsphinx hears in each turn's audio (resampled to its 16 kHz)."""
    import soxr
    from pocketsphinx import Decoder

    decoder = Decoder(samprate=16000, logfn="/dev/null")
    heard = []
    for turn in turns:
        assert turn.audio is not None
        audio = soxr.resample(turn.audio, turn.rate_hz, 16000)
        decoder.start_utt()
        decoder.process_raw(np.asarray(audio, dtype=np.int16).tobytes(), full_utt=True)
        decoder.end_utt()
        hypothesis = decoder.hyp()
        heard.append(words(hypothesis.hypstr) if hypothesis is not None else [])
    return heard


def word_error_rate(texts: Sequence[str], turns: Sequence[Turn]) -> float:
    """Errors over reference words, all turns together."""
    expected = [words(text) for text in texts]
    errors = sum(map(word_errors, expected, transcribe(turns)))
    return errors / sum(len(w) for w in expected)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f}"


def section(
    runs: Runs, wer: dict[str, float], chosen: dict[int, list[int]], quick: bool
) -> Section:
    rows: list[Sequence[str]] = []
    for (voice, pace, mode), turns in runs.turns.items():
        first = [t.first_audio_s for t in turns]
        gaps = [t.worst_gap_s for t in turns]
        segments = [t.segments for t in turns]
        floors = runs.floors[(voice, pace)]
        floor = median(floors)
        rows.append(
            (
                voice,
                str(pace),
                mode,
                str(len(turns)),
                f"{_ms(median(first))} / {_ms(percentile(first, 90))}",
                f"{_ms(floor)} / {_ms(percentile(floors, 90))}",
                f"{median(first) / floor:.2f}",
                f"{_ms(median(gaps))} / {_ms(max(gaps))}",
                str(sum(gap > GAP_LIMIT_S for gap in gaps)),
                f"{median(segments):g} / {max(segments)}",
                f"{sum(t.audio_s for t in turns):.0f}",
                f"{wer[mode] * 100:.1f}"
                if voice == PIPER and pace == FULL_PACE and mode in wer
                else "",
            )
        )

    def first_audio(mode: str, pace: int = FULL_PACE) -> list[float]:
        return [t.first_audio_s for t in runs.turns[(PIPER, pace, mode)]]

    clause, sentences = first_audio(FIRST_CLAUSE), first_audio(SENTENCES)
    floor = median(runs.floors[(PIPER, FULL_PACE)])
    by_median = median(clause) / median(sentences)
    by_floor = median(clause) / floor
    by_p90 = percentile(clause, 90) / percentile(sentences, 90)
    worst = {
        pace: max(t.worst_gap_s for t in runs.turns[(PIPER, pace, FIRST_CLAUSE)]) for pace in PACES
    }
    wer_rise = wer[FIRST_CLAUSE] - wer[SENTENCES]
    at = f"{PIPER} at {FULL_PACE} tokens/s"
    goals = [
        Goal(
            f"{at}: first-clause median first audio at most {FIRST_AUDIO_RATIO}x the "
            "sentences median",
            f"{_ms(median(clause))} ms against {_ms(median(sentences))} ms: {by_median:.2f}x",
            by_median <= FIRST_AUDIO_RATIO,
        ),
        Goal(
            f"{at}: first-clause median first audio within {FLOOR_RATIO}x the floor median",
            f"{_ms(median(clause))} ms against {_ms(floor)} ms: {by_floor:.2f}x",
            by_floor <= FLOOR_RATIO,
        ),
        Goal(
            f"{at}: first-clause p90 first audio at most {P90_RATIO}x the sentences p90",
            f"{_ms(percentile(clause, 90))} ms against {_ms(percentile(sentences, 90))} ms: "
            f"{by_p90:.2f}x",
            by_p90 <= P90_RATIO,
        ),
        Goal(
            f"{PIPER}, first clause (default), one session: no mid-turn gap over "
            f"{GAP_LIMIT_S * 1000:.0f} ms at {', '.join(map(str, PACES))} tokens/s",
            ", ".join(f"worst {_ms(gap)} ms at {pace}" for pace, gap in worst.items()),
            all(gap <= GAP_LIMIT_S for gap in worst.values()),
        ),
        Goal(
            f"{at}: first-clause word error rate at most {WER_MARGIN * 100:.0f} points above "
            "sentences",
            f"{wer[FIRST_CLAUSE] * 100:.1f}% against {wer[SENTENCES] * 100:.1f}%: "
            f"{wer_rise * 100:+.1f} points",
            wer_rise <= WER_MARGIN,
        ),
    ]
    notes = [
        "The floor's text part is the time the pieces take to complete the first clause "
        f"of at least {MIN_CLAUSE_WORDS} words, as voxrelay's splitter reads it (a clause "
        "mark or a sentence end, `Dr. Smith` and a list's `1.` not being one), without "
        "the stall rule; a reply without such a clause before its end has its whole text "
        "as the clause, complete with its last piece. Its engine part is the engine "
        "called directly in the benchmark process, measured beside each reply: piper's "
        "`PiperVoice` with onnxruntime's default threading, espeak-ng's library, each to "
        "its first chunk.",
        "Word error rates are pocketsphinx's (its bundled general en-US model) over all "
        f"the replies at {FULL_PACE} tokens/s, so their level says as much about the "
        "recogniser as about the voice; numbers are compared as written (`3:30` against "
        "the spoken `three thirty`), which counts against both modes alike. Only the "
        "difference between the modes is meaningful; piper's synthesis is not "
        "deterministic, so the same text sounds a little different in each mode.",
    ]
    clause_inside = {
        index
        for index, reply in enumerate(runs.texts)
        if not first_clause(pieces(reply))[1].endswith(("!", "?", "."))
        and first_clause(pieces(reply))[1] != reply.strip()
    }

    def median_of(mode: str, inside: bool) -> float:
        turns = runs.turns[(PIPER, FULL_PACE, mode)]
        return median(
            [t.first_audio_s for i, t in enumerate(turns) if (i in clause_inside) == inside]
        )

    if 0 < len(clause_inside) < len(runs.texts):
        split = [
            f"{'ends inside' if inside else 'is'} the first sentence"
            f"{'' if inside else ' (or the whole reply)'} "
            f"({len(clause_inside) if inside else len(runs.texts) - len(clause_inside)} "
            f"replies): {_ms(median_of(FIRST_CLAUSE, inside))} against "
            f"{_ms(median_of(SENTENCES, inside))} ms, "
            f"{median_of(FIRST_CLAUSE, inside) / median_of(SENTENCES, inside):.2f}x"
            for inside in (True, False)
        ]
        notes.append(
            f"First audio of {PIPER} at {FULL_PACE} tokens/s, first clause against "
            "sentences (medians), where the first clause " + "; where it ".join(split) + ". "
            f"{FIRST_AUDIO_RATIO}x the sentences median is "
            f"{_ms(FIRST_AUDIO_RATIO * median(sentences))} ms, "
            f"{'below' if FIRST_AUDIO_RATIO * median(sentences) < floor else 'above'} the "
            f"floor median ({_ms(floor)} ms): where a reply's first clause is its first "
            "sentence both modes cut the same first segment, so the median ratio over a "
            "corpus depends on how many replies open with a short sentence. Likewise "
            f"{P90_RATIO}x the sentences p90 is {_ms(P90_RATIO * percentile(sentences, 90))} "
            f"ms against a floor p90 of {_ms(percentile(runs.floors[(PIPER, FULL_PACE)], 90))}"
            " ms. What would move them is a first segment shorter than a clause of "
            f"{MIN_CLAUSE_WORDS} words (fewer words, or words cut without a clause mark), "
            "which the word error rate and prosody pay for."
        )
    late = sorted(
        (
            (turn.worst_gap_s, voice, pace, mode, turn)
            for (voice, pace, mode), turns in runs.turns.items()
            for turn in turns
            if turn.worst_gap_s > GAP_LIMIT_S
        ),
        key=lambda item: -item[0],
    )
    if late:
        notes.append(
            f"Turns with a gap over {GAP_LIMIT_S * 1000:.0f} ms, worst first"
            + (f" ({LATE_SHOWN} of {len(late)})" if len(late) > LATE_SHOWN else "")
            + ": "
            + "; ".join(
                f"{voice}, {pace} tokens/s, {mode}, reply {turn.reply}: {_ms(gap)} ms "
                f"after {turn.gap_after_s:.1f} s of audio, {turn.segments} segments"
                + (
                    f", the first {turn.first_segment_s:.1f} s of audio"
                    if turn.first_segment_s
                    else ""
                )
                for gap, voice, pace, mode, turn in late[:LATE_SHOWN]
            )
            + ". A gap comes where the next segment's first audio takes longer to make "
            "than the audio before it takes to play."
        )
    subset = (
        f"replies {', '.join(map(str, chosen[FULL_PACE]))} of the corpus at {FULL_PACE} "
        f"tokens/s, {', '.join(map(str, chosen[PACES[0]]))} at the others"
        if quick
        else (
            f"all {len(chosen[FULL_PACE])} replies at {FULL_PACE} tokens/s, every "
            f"{SUBSET_EVERY}th ({len(chosen[PACES[0]])}) at the others"
        )
    )
    return Section(
        title="Voice agent: replies streamed token by token",
        method=(
            f"Assistant replies from `bench/corpus/replies.json` ({subset}) sent as word "
            "pieces (each word with the whitespace before it; words over "
            f"{LONG_WORD} characters in two) at 20, 40 and 80 pieces a second, then "
            "`turn_done`, on one session per mode of `voxrelay serve --engines piper,espeak` "
            "(default settings), turns one after the other, the modes interleaved reply by "
            "reply, each first in turn: voxrelay's default segmentation (first clause), "
            "`segmentation=sentences`, and for piper the reference `StreamedAudioResult` "
            "in-process (driven as `VoicePipeline` does, buffer_size=1) with a `TTSModel` "
            "running the same piper voice. First audio: from the first piece sent to the "
            "first audio message. Worst gap: the longest silence mid-turn for a listener who "
            "starts playing at the first audio, at real time, each message played once it is "
            "there and the audio before it has played. Segments: distinct segment numbers of "
            "the turn's audio messages (the reference: its TTS model's runs). WER: piper at "
            f"{FULL_PACE} tokens/s, pocketsphinx on the audio resampled to 16 kHz. Times in ms."
        ),
        header=(
            "voice",
            "tokens/s",
            "mode",
            "turns",
            "first audio p50 / p90",
            "floor p50 / p90",
            "p50 / floor",
            "worst gap p50 / max",
            f"turns with a gap > {GAP_LIMIT_S * 1000:.0f} ms",
            "segments per turn p50 / max",
            "audio s",
            "WER %",
        ),
        rows=rows,
        goals=goals,
        notes=notes,
    )


async def run(quick: bool) -> Section:
    """Every voice, pace and mode against one voxrelay server process."""
    began = time.perf_counter()
    replies = load_replies()
    chosen = plan(replies, quick)
    starting = asyncio.create_task(
        asyncio.to_thread(start_server_process, ["--engines", "piper,espeak"])
    )
    await asyncio.sleep(0)  # let it hand the start to its thread before this loads models
    from piper import PiperVoice

    model, config = bundled_joe_voice()
    reference = PiperTTSModel(PiperVoice.load(model, config_path=config))
    voices = ((PIPER, piper_direct(), reference), (ESPEAK, espeak_direct(), None))
    server = await starting
    print(f"   server and voices ready: {time.perf_counter() - began:.0f} s", file=sys.stderr)
    runs = Runs()
    try:
        async with AsyncClient(server.target) as client:
            for voice, direct, tts in voices:
                await measure_voice(client, voice, direct, tts, replies, chosen, runs, quick)
    finally:
        await asyncio.to_thread(stop_server_process, server)
    began = time.perf_counter()
    wer = {
        mode: word_error_rate(runs.texts, runs.turns[(PIPER, FULL_PACE, mode)])
        for mode in (FIRST_CLAUSE, SENTENCES)
    }
    print(f"   transcripts: {time.perf_counter() - began:.0f} s", file=sys.stderr)
    return section(runs, wer, chosen, quick)


def main(argv: Sequence[str] | None = None) -> int:
    return run_alone(
        run,
        argv,
        prog="python -m bench.voice_agent",
        description=__doc__,
        quick_help="a few replies",
    )


if __name__ == "__main__":
    sys.exit(main())
