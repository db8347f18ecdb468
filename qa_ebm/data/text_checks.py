"""Is this user input text? One check for questions, passages and answers typed or piped in by a user."""

from __future__ import annotations

import unicodedata

from qa_ebm.errors import DataError

_BINARY_SHARE = 0.1  # more than this share of control/unassigned/replacement characters: not text
_BINARY_CATEGORIES = frozenset({"Cc", "Cs", "Cn"})


def check_text(text: object, where: str, what: str = "text") -> None:
    """Raise :class:`DataError` unless `text` is a non-empty string that is not whitespace and not binary.

    `where` says which input ("question 3", "--context-file notes.txt"), `what` what it should be.
    """
    if not isinstance(text, str):
        raise DataError(f"{where}: expected a string, got {type(text).__name__}")
    if not text.strip():
        raise DataError(f"{where}: the {what} is {'empty' if not text else 'whitespace only'}")
    if "\x00" in text:
        raise DataError(f"{where}: the {what} contains NUL characters (binary data, not text)")
    # Tabs and newlines are Cc but fine; U+FFFD is what a binary file decoded with errors="replace" becomes.
    bad = sum(
        1 for ch in text if ch == "\ufffd" or (not ch.isspace() and unicodedata.category(ch) in _BINARY_CATEGORIES)
    )
    if bad > _BINARY_SHARE * len(text):
        raise DataError(
            f"{where}: {bad} of {len(text)} characters are control, unassigned or replacement characters "
            "(binary data, not text)"
        )
