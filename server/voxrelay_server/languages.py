"""Language tags: which voices speak a language, and what an unknown name may mean.

Voices carry BCP-47 tags (`en-US`, `de`, `cmn`). A query matches a tag when it is
the tag or a prefix of it ending at a subtag boundary, compared case-insensitively
with `_` read as `-` (`en` and `en_us` match `en-US`; `en-U` does not). A bare
macrolanguage also matches the individual languages it covers, by ISO 639-3
(`zh` matches `cmn`, `yue` and `hak`; `ar` matches `arb`), so asking for Chinese
finds espeak-ng's Mandarin and Cantonese voices. The ISO 639 data comes from the
`iso639-lang` package, which ships it (no download).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

_TAG = re.compile(r"^[a-z]{2,3}(-[a-z0-9]{1,8})*$")
"""The shape of a BCP-47 tag: a primary language subtag of 2 or 3 letters (ISO 639;
longer ones are reserved or unused), then subtags of up to 8 letters or digits
(script, region, variants, private use)."""


def normalize(tag: str) -> str:
    """Lower case, `_` as `-`, surrounding spaces dropped: the form tags compare in."""
    return tag.strip().replace("_", "-").lower()


def is_language_tag(tag: str) -> bool:
    """True when `tag` has the shape of a BCP-47 language tag (after `normalize`)."""
    return bool(_TAG.match(normalize(tag)))


@functools.lru_cache(maxsize=1024)
def _macrolanguages(primary: str) -> frozenset[str]:
    """The codes (ISO 639-1 and 639-3) of the macrolanguage `primary` belongs to;
    empty when it belongs to none or is unknown."""
    from iso639 import Lang
    from iso639.exceptions import InvalidLanguageValue

    try:
        macro = Lang(primary).macro()
    except InvalidLanguageValue:
        return frozenset()
    if macro is None:
        return frozenset()
    return frozenset(code for code in (macro.pt1, macro.pt3) if code)


def matches(tags: Iterable[str], query: str) -> bool:
    """True when a voice with language `tags` speaks the language `query` names."""
    wanted = normalize(query)
    if not wanted:
        return True
    for tag in map(normalize, tags):
        if tag == wanted or tag.startswith(f"{wanted}-"):
            return True
        if "-" not in wanted and wanted in _macrolanguages(tag.partition("-")[0]):
            return True
    return False


@functools.lru_cache(maxsize=256)
def language_named(text: str) -> str | None:
    """The language tag `text` stands for: itself when it has a tag's shape, else the
    ISO 639 code of a language of that English name ("German" -> "de"); None else."""
    if is_language_tag(text):
        return normalize(text)
    from iso639 import Lang
    from iso639.exceptions import InvalidLanguageValue

    try:
        found = Lang(text.strip().capitalize())
    except InvalidLanguageValue:
        return None
    return found.pt1 or found.pt3 or None
