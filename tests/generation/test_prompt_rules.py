"""The prompt rows of docs/hardening.md."""

from __future__ import annotations

import pytest

from generation.prompt_rules import BIDI_CONTROLS, PromptRejected, clean_prompt_or_reject


def rejected(text, code: str) -> str:
    with pytest.raises(PromptRejected) as info:
        clean_prompt_or_reject(text)
    assert info.value.code == code
    assert isinstance(info.value, ValueError) and str(info.value) == info.value.message
    return info.value.message


def test_surrounding_space_is_stripped_and_line_endings_unified():
    assert clean_prompt_or_reject("  a cat\r\nwalks\rby\t \n") == "a cat\nwalks\nby"


def test_text_is_nfc_normalised():
    assert clean_prompt_or_reject("cafe\u0301") == "caf\u00e9"


@pytest.mark.parametrize("text", ["", "   ", "\n\t\r\n", None])
def test_empty_prompt(text):
    assert "prompt" in rejected(text, "prompt_empty").lower()


def test_not_text():
    assert "int" in rejected(42, "prompt_type")


def test_length_limit_is_inclusive_and_named(settings):
    settings.TURBO_MAX_PROMPT_CHARS = 10
    assert clean_prompt_or_reject(" " + "x" * 10 + " ") == "x" * 10  # spaces stripped before counting
    message = rejected("x" * 11, "prompt_too_long")
    assert "11 characters" in message and "limit is 10" in message


def test_default_limit_is_2000():
    assert clean_prompt_or_reject("y" * 2000) == "y" * 2000
    rejected("y" * 2001, "prompt_too_long")


@pytest.mark.parametrize(("char", "name"), [("\x00", "U+0000"), ("\x1b", "U+001B"), ("\x7f", "U+007F"),
                                            ("\x85", "U+0085"), ("\x08", "U+0008")])
def test_control_characters_are_refused(char, name):
    message = rejected(f"a cat{char} walks", "prompt_control_character")
    assert name in message and "position 6" in message


@pytest.mark.parametrize("char", sorted(BIDI_CONTROLS))
def test_bidi_controls_are_refused(char):
    message = rejected(f"safe {char}txet", "prompt_bidi_character")
    assert f"U+{ord(char):04X}" in message


def test_bidi_set_covers_overrides_isolates_and_marks():
    assert {"\u202e", "\u202d", "\u2066", "\u2067", "\u2068", "\u2069", "\u200f", "\u200e", "\u061c"} <= BIDI_CONTROLS


def test_lone_surrogate_is_refused():
    assert "surrogate" in rejected("bad \ud800 text", "prompt_invalid_character")


@pytest.mark.parametrize("text", [
    "a dog runs\tacross the field\nthen stops",
    "\u05e9\u05dc\u05d5\u05dd \u0645\u0631\u062d\u0628\u0627 mixed scripts",  # right-to-left letters are fine
    "family \U0001f468\u200d\U0001f469\u200d\U0001f467 emoji with joiners",
    "\u4e00\u53ea\u732b\u5728\u8d70",
])
def test_ordinary_text_in_any_script_passes(text):
    assert clean_prompt_or_reject(text) == text
