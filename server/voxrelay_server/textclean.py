"""What the server does with characters that carry no speech, before any engine sees them.

Control characters (U+0000-U+001F and U+007F-U+009F, other than tab, line feed and
carriage return) and lone surrogates become a space, for every engine alike. They
cannot be spoken; left in, they fail or truncate an engine's call (piper refuses
text with NUL in it, espeak-ng stops reading at the NUL), and dropped outright
they would join the words on either side. A space keeps every other character,
and the text's length, as sent. Everything else (letters of any script, emoji,
format characters such as joiners, private-use characters) is left to the engine.
"""

from __future__ import annotations

import re

_UNSPEAKABLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


def clean_text(text: str) -> str:
    """`text` with each control character and lone surrogate replaced by a space."""
    if _UNSPEAKABLE.search(text) is None:  # the common case: no copy
        return text
    return _UNSPEAKABLE.sub(" ", text)
