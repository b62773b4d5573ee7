"""What a prompt may contain. The services call `clean_prompt_or_reject` before a job row exists.

Rules (docs/hardening.md):
- Line endings become "\\n", the text is NFC-normalised and stripped; what is left must not be empty.
- At most settings.TURBO_MAX_PROMPT_CHARS characters (default 2000; the text encoder reads 512 tokens, and a
  prompt far past that is a mistake or abuse, not a longer description).
- Control characters other than newline and tab are refused: NUL cannot be stored in PostgreSQL text, and the
  rest are invisible in every page that shows the prompt.
- Bidirectional overrides and isolates (U+202A-U+202E, U+2066-U+2069, and the marks U+200E, U+200F, U+061C) are
  refused: they make the prompt display differently from what the model reads.
- Lone surrogates (only reachable through escaped JSON) are refused: they cannot be encoded as UTF-8.
"""

from __future__ import annotations

import unicodedata
from typing import Final

from generation.limits import limit

BIDI_CONTROLS: Final = frozenset(
    "\u202a\u202b\u202c\u202d\u202e"  # embeddings and overrides
    "\u2066\u2067\u2068\u2069"  # isolates
    "\u200e\u200f\u061c"  # directional marks
)
_ALLOWED_CONTROLS: Final = frozenset("\n\t")


class PromptRejected(ValueError):
    """A prompt that cannot be used. `message` is for the person; `code` is stable for programs."""

    def __init__(self, message: str, code: str = "invalid_prompt") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def max_prompt_chars() -> int:
    return int(limit("prompt").maximum)  # settings.TURBO_MAX_PROMPT_CHARS, through the limits table


def clean_prompt_or_reject(text: object) -> str:
    """The prompt as it will be stored and sent to the model, or PromptRejected naming what is wrong."""
    if text is None:
        raise PromptRejected("A prompt is required.", "prompt_empty")
    if not isinstance(text, str):
        raise PromptRejected(f"The prompt must be text, got {type(text).__name__}.", "prompt_type")
    _reject_unencodable(text)
    cleaned = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n")).strip()
    if not cleaned:
        raise PromptRejected("The prompt is empty. Describe the motion you want to see.", "prompt_empty")
    limit = max_prompt_chars()
    if len(cleaned) > limit:
        raise PromptRejected(
            f"The prompt is {len(cleaned)} characters long; the limit is {limit}.", "prompt_too_long")
    _reject_hidden_characters(cleaned)
    return cleaned


def _reject_unencodable(text: str) -> None:
    for position, char in enumerate(text):
        if unicodedata.category(char) == "Cs":
            raise PromptRejected(
                f"The prompt contains an invalid character (lone surrogate U+{ord(char):04X}) at position "
                f"{position + 1}.", "prompt_invalid_character",
            )


def _reject_hidden_characters(text: str) -> None:
    for position, char in enumerate(text):
        if char in BIDI_CONTROLS:
            raise PromptRejected(
                f"The prompt contains a bidirectional control character ({_describe(char)}) at position "
                f"{position + 1}; remove it (it makes text display differently from what it says).",
                "prompt_bidi_character",
            )
        if unicodedata.category(char) == "Cc" and char not in _ALLOWED_CONTROLS:
            raise PromptRejected(
                f"The prompt contains a control character ({_describe(char)}) at position {position + 1}; "
                "only letters, punctuation, spaces, tabs and new lines are allowed.",
                "prompt_control_character",
            )


def _describe(char: str) -> str:
    name = unicodedata.name(char, "")
    return f"U+{ord(char):04X} {name}" if name else f"U+{ord(char):04X}"
