"""File-name rules: an allow-list of what a stored name may be.

A name is normalised to Unicode NFC (macOS sends NFD), then must be 1..255 UTF-8 bytes, not
``.`` or ``..``, and free of path separators (``/``, ``\\``), NUL and other control characters
(Unicode category Cc), line and paragraph separators, and every bidirectional control
character (Bidi_Control), which can make ``evil\u202etxt.exe`` display as ``evilexe.txt``. A
new name also needs one visible character (not only spaces, U+200B, U+FEFF and the like).
"""

import unicodedata

from vault.errors import InvalidFilename
from vault.format import MAX_NAME_BYTES

_FORBIDDEN = frozenset(
    "/\\\u2028\u2029\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)


def check_filename(name: object) -> str:
    """Return the normalised name, or raise InvalidFilename saying what is wrong."""
    if not isinstance(name, str) or not name:
        raise InvalidFilename("Invalid filename: a non-empty file name is required")
    name = unicodedata.normalize("NFC", name)
    if len(name.encode("utf-8", errors="replace")) > MAX_NAME_BYTES:
        raise InvalidFilename(f"Invalid filename: longer than {MAX_NAME_BYTES} bytes in UTF-8")
    if name in (".", ".."):
        raise InvalidFilename("Invalid filename: '.' and '..' are not file names")
    for char in name:
        if char in _FORBIDDEN or unicodedata.category(char) in ("Cc", "Cs"):
            raise InvalidFilename(
                "Invalid filename: path separators, control and bidirectional characters are not allowed"
            )
    return name


# Characters that show nothing: spaces and blanks, format characters (U+200B zero width
# space, U+FEFF), combining marks standing alone, and letters drawn blank (Hangul fillers,
# the blank Braille pattern).
_BLANK_CATEGORIES = frozenset(("Zs", "Zl", "Zp", "Cf", "Mn", "Me"))
_BLANK_LETTERS = frozenset("\u115f\u1160\u3164\uffa0\u2800")


def check_new_filename(name: object) -> str:
    """``check_filename`` for a name being stored: also refuses a name made only of invisible
    or blank characters, which no listing can show. (Lookups use ``check_filename``, so a
    file stored under such a name before this rule can still be downloaded and deleted.)"""
    name = check_filename(name)
    if all(c.isspace() or c in _BLANK_LETTERS or unicodedata.category(c) in _BLANK_CATEGORIES for c in name):
        raise InvalidFilename("Invalid filename: a name needs at least one visible character")
    return name
