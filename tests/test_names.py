"""check_filename: the allow-list of what a stored file name may be."""

import sys
import unicodedata

import pytest

from vault.errors import InvalidFilename
from vault.names import check_filename, check_new_filename

# Unicode's Bidi_Control property (PropList.txt): the explicit formatting characters
# (embeddings, overrides, isolates: the Trojan Source set, which can make "evil\u202etxt.exe"
# display as "evilexe.txt"), found by their bidirectional class in unicodedata, and the three
# implicit marks, which reorder neighbouring text as well.
_EXPLICIT_CLASSES = {"LRE", "RLE", "PDF", "LRO", "RLO", "LRI", "RLI", "FSI", "PDI"}
_MARKS = ("ARABIC LETTER MARK", "LEFT-TO-RIGHT MARK", "RIGHT-TO-LEFT MARK")
BIDI_CONTROL = sorted(
    {chr(c) for c in range(sys.maxunicode + 1) if unicodedata.bidirectional(chr(c)) in _EXPLICIT_CLASSES}
    | {unicodedata.lookup(mark) for mark in _MARKS}
)
C0_AND_DEL = [chr(c) for c in range(0x20)] + ["\x7f"]
C1 = [chr(c) for c in range(0x80, 0xA0)]


def assert_rejected(name: object) -> None:
    with pytest.raises(InvalidFilename) as info:
        check_filename(name)
    assert str(info.value).startswith("Invalid filename")
    assert info.value.message.startswith("Invalid filename")


@pytest.mark.parametrize(
    "name",
    [
        "report.pdf",
        "a",
        "no-extension",
        ".hidden",
        "...",
        "a..b",
        "name with spaces.txt",
        " leading and trailing ",
        "café.txt",
        "日本語のファイル.txt",
        "emoji-😀.png",
        "Ωmega-ß.bin",
        "x" * 255,
    ],
)
def test_ordinary_names_are_accepted_unchanged(name: str) -> None:
    assert check_filename(name) == name


def test_255_byte_multibyte_name_is_accepted() -> None:
    name = "a" * 253 + "é"  # 253 + 2 bytes
    assert len(name.encode("utf-8")) == 255
    assert check_filename(name) == name


def test_nfd_name_is_normalised_to_nfc() -> None:
    nfd = unicodedata.normalize("NFD", "café résumé.txt")
    assert nfd != "café résumé.txt"
    result = check_filename(nfd)
    assert result == "café résumé.txt"
    assert unicodedata.is_normalized("NFC", result)


def test_length_limit_applies_to_the_nfc_form() -> None:
    nfd = "e\u0301" * 100  # 300 bytes as NFD, 200 bytes as NFC
    assert len(nfd.encode("utf-8")) > 255
    assert check_filename(nfd) == "é" * 100


@pytest.mark.parametrize("name", [None, b"report.pdf", 42, ["a"], object()])
def test_non_string_is_rejected(name: object) -> None:
    assert_rejected(name)


@pytest.mark.parametrize("name", ["", ".", "..", "/", "a/b", "/etc/passwd", "../x", "\\", "a\\b", "..\\x"])
def test_empty_dot_names_and_path_separators_are_rejected(name: str) -> None:
    assert_rejected(name)


@pytest.mark.parametrize("char", C0_AND_DEL, ids=[f"U+{ord(c):04X}" for c in C0_AND_DEL])
def test_every_c0_control_and_del_is_rejected(char: str) -> None:
    assert_rejected(f"a{char}b.txt")
    assert_rejected(char)


@pytest.mark.parametrize("char", C1, ids=[f"U+{ord(c):04X}" for c in C1])
def test_every_c1_control_is_rejected(char: str) -> None:
    assert_rejected(f"a{char}b.txt")


def test_the_bidi_control_set_is_the_twelve_of_unicode() -> None:
    """A guard on the list below: a Unicode update that moves a character shows up here."""
    assert [f"{ord(c):04X}" for c in BIDI_CONTROL] == [
        "061C", "200E", "200F", "202A", "202B", "202C", "202D", "202E", "2066", "2067", "2068", "2069",
    ]  # fmt: skip


@pytest.mark.parametrize("char", BIDI_CONTROL, ids=[f"U+{ord(c):04X}" for c in BIDI_CONTROL])
def test_every_bidi_control_character_is_rejected(char: str) -> None:
    assert_rejected(f"evil{char}txt.exe")
    assert_rejected(char)


@pytest.mark.parametrize("char", ["\u2028", "\u2029"], ids=["U+2028", "U+2029"])
def test_line_and_paragraph_separators_are_rejected(char: str) -> None:
    assert_rejected(f"a{char}b")


@pytest.mark.parametrize("char", ["\ud800", "\udbff", "\udc00", "\udfff"])
def test_lone_surrogates_are_rejected(char: str) -> None:
    assert_rejected(f"a{char}b")
    assert_rejected(char)


@pytest.mark.parametrize(
    "name",
    [
        "x" * 256,
        "x" * 1000,
        "é" * 128,  # 256 bytes in 128 characters
        "a" * 254 + "é",  # the last character crosses 255
        "a" * 253 + "€",  # 3-byte character crosses 255
        "a" * 252 + "😀",  # 4-byte character crosses 255
        "😀" * 64,  # 256 bytes in 64 characters
    ],
    ids=[
        "ascii-256",
        "ascii-1000",
        "2byte-256",
        "2byte-crossing",
        "3byte-crossing",
        "4byte-crossing",
        "4byte-256",
    ],
)
def test_names_over_255_utf8_bytes_are_rejected(name: str) -> None:
    assert len(name.encode("utf-8")) > 255
    assert_rejected(name)


FORBIDDEN_CHARACTER = (
    "Invalid filename: path separators, control and bidirectional characters are not allowed"
)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "Invalid filename: a non-empty file name is required"),
        (None, "Invalid filename: a non-empty file name is required"),
        ("x" * 256, "Invalid filename: longer than 255 bytes in UTF-8"),
        ("..", "Invalid filename: '.' and '..' are not file names"),
        ("a/b", FORBIDDEN_CHARACTER),
        ("a\u202eb", FORBIDDEN_CHARACTER),
    ],
)
def test_each_rule_says_what_is_wrong(name: object, message: str) -> None:
    """The message names the broken rule (it is the 400 body's message)."""
    with pytest.raises(InvalidFilename) as info:
        check_filename(name)
    assert info.value.message == message


# A new name needs one visible character. One name per way a character can show nothing: a
# space (Zs), a format character (Cf: U+200B, U+FEFF), a combining mark alone (Mn, Me), and
# the letters drawn blank (Hangul fillers, the blank Braille pattern), each also beside a space.
BLANK_LETTERS = ["\u115f", "\u1160", "\u3164", "\uffa0", "\u2800"]
BLANK_NAMES = [" ", "\u3000", "\u00a0", "\u200b", "\ufeff", "\u0301", "\u20dd", *BLANK_LETTERS] + [
    " " + letter for letter in BLANK_LETTERS
]


@pytest.mark.parametrize("name", BLANK_NAMES, ids=[ascii(n) for n in BLANK_NAMES])
def test_a_new_name_without_a_visible_character_is_refused(name: str) -> None:
    assert check_filename(name) == name  # an old file under this name can still be looked up
    with pytest.raises(InvalidFilename) as info:
        check_new_filename(name)
    assert info.value.message == "Invalid filename: a name needs at least one visible character"
    assert str(info.value) == info.value.message


@pytest.mark.parametrize("name", ["a\u200b", " x ", "\u200bb", "e\u0301", "\u3164x", "\u2800\u2801", "..."])
def test_a_new_name_with_one_visible_character_is_accepted(name: str) -> None:
    assert check_new_filename(name) == unicodedata.normalize("NFC", name)


@pytest.mark.parametrize("name", ["", "a/b", "..", "x" * 256, "a\u202eb"])
def test_a_new_name_keeps_every_rule_of_a_stored_name(name: str) -> None:
    with pytest.raises(InvalidFilename):
        check_new_filename(name)
