"""What makes a pair of ticket IDs unsendable, as one-byte codes per row and words per code.

A row's verdict is a ``uint8`` code (``Plan.codes``), so a million-row plan stays small.
The words for a code are derived from the code and the row's own IDs when the row is
written (:func:`invalid_text`): the character or Excel error named in the report is read
back from the ID itself, and nothing per row is kept in memory. Whole chunks are checked
with numpy over the joined IDs; Python only looks at the rare rows that are flagged.
"""

from __future__ import annotations

import re
import unicodedata
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

SEND, BLANK_SOURCE, BLANK_LINKED, BLANK_BOTH, SELF_LINK, DUPLICATE, KEEP = range(7)
CONTROL_SOURCE, CONTROL_LINKED = 7, 8
EXCEL_ERROR_SOURCE, EXCEL_ERROR_LINKED = 9, 10
LOST_DIGITS_SOURCE, LOST_DIGITS_LINKED = 11, 12
ALREADY = 13  # linked in this scope by an earlier run (the state store): not sent
#: What a spreadsheet's ID cell is when it cannot be an ID as it stands (0: text or an
#: exact number): a number cut short, a date, a time, both, a boolean, a formula whose
#: value was never calculated (a file written by a program, never opened in Excel).
LOST, DATE, TIME, DATETIME, BOOLEAN, FORMULA = range(1, 7)
#: The codes of the kinds after LOST, two a kind (source, linked): 14 to 23.
_KIND_BASE = 14
_KINDS = {
    DATE: "a date",
    TIME: "a time",
    DATETIME: "a date and time",
    BOOLEAN: "a TRUE/FALSE value",
    FORMULA: "a formula that was never calculated",
}
#: An ID longer than any ticket's (a runaway cell): never sent, so no request is huge.
TOO_LONG_SOURCE, TOO_LONG_LINKED = 24, 25
MAX_ID = 256
#: A CSV row with a value past the header's last column: a cell holding the delimiter
#: unquoted (``Acme, Inc.``) has shifted the cells after it, so its IDs cannot be trusted.
EXTRA_CELLS = 26
#: An ID a Python caller gave (``link_pairs``) that is neither text nor a whole number held
#: exactly: a bool, bytes, a list, a float past 15 digits or not whole, infinity. Its
#: ``str()`` (``True``, ``1e+20``) is no ticket's ID, so it is never sent.
NOT_AN_ID_SOURCE, NOT_AN_ID_LINKED = 27, 28
# Generic words per code; :func:`invalid_text` names the character or error of the row.
INVALID_REASONS = {
    BLANK_SOURCE: "blank source ticket ID",
    BLANK_LINKED: "blank linked ticket ID",
    BLANK_BOTH: "blank source and linked ticket IDs",
    SELF_LINK: "source and linked ticket are the same",
    CONTROL_SOURCE: "source ticket ID contains a control character",
    CONTROL_LINKED: "linked ticket ID contains a control character",
    EXCEL_ERROR_SOURCE: "Excel error in sourceTicketId",
    EXCEL_ERROR_LINKED: "Excel error in linkedTicketId",
    LOST_DIGITS_SOURCE: "Excel stored the source ID as a number and lost digits",
    LOST_DIGITS_LINKED: "Excel stored the linked ID as a number and lost digits",
    TOO_LONG_SOURCE: f"source ticket ID is longer than {MAX_ID} characters",
    TOO_LONG_LINKED: f"linked ticket ID is longer than {MAX_ID} characters",
    NOT_AN_ID_SOURCE: "source ticket ID is neither text nor a whole number held exactly",
    NOT_AN_ID_LINKED: "linked ticket ID is neither text nor a whole number held exactly",
    EXTRA_CELLS: (
        "the row has more cells than the header: a cell holding the delimiter unquoted "
        "shifts the cells after it, so its IDs may not be the ones meant; quote that "
        "cell or remove the extra one"
    ),
}
INVALID_REASONS.update(
    {
        _KIND_BASE + 2 * (kind - DATE) + side: f"{name} ID cell is {words}"
        for kind, words in _KINDS.items()
        for side, name in enumerate(("source", "linked"))
    }
)
_SIDES = {
    **{code: (code - _KIND_BASE) % 2 for code in range(_KIND_BASE, _KIND_BASE + 2 * len(_KINDS))},
    CONTROL_SOURCE: 0,
    CONTROL_LINKED: 1,
    EXCEL_ERROR_SOURCE: 0,
    EXCEL_ERROR_LINKED: 1,
    LOST_DIGITS_SOURCE: 0,
    LOST_DIGITS_LINKED: 1,
    NOT_AN_ID_SOURCE: 0,
    NOT_AN_ID_LINKED: 1,
}
_COLUMN = ("sourceTicketId", "linkedTicketId")

# Error values of Excel (and Google Sheets' #ERROR!), as a cell shows them and as a CSV
# exported from the sheet holds them: a failed VLOOKUP is ``#N/A``, never a ticket.
EXCEL_ERRORS = frozenset(
    {
        "#NULL!",
        "#DIV/0!",
        "#VALUE!",
        "#REF!",
        "#NAME?",
        "#NUM!",
        "#N/A",
        "#GETTING_DATA",
        "#SPILL!",
        "#CALC!",
        "#FIELD!",
        "#BLOCKED!",
        "#CONNECT!",
        "#BUSY!",
        "#UNKNOWN!",
        "#EXTERNAL!",
        "#PYTHON!",
        "#ERROR!",
        # Google Sheets' export of a formula still waiting for its data (IMPORTRANGE).
        "Loading...",
        # As a German, French, Spanish, Italian or Portuguese Excel writes them in a CSV.
        *("#NV", "#WERT!", "#BEZUG!", "#ZAHL!", "#NAME?", "#NULL!"),
        *("#VALEUR!", "#NOM?", "#NOMBRE!", "#NUL!"),
        *("#¡VALOR!", "#¿NOMBRE?", "#¡REF!", "#¡NUM!", "#¡DIV/0!", "#¡NULO!"),
        *("#N/D", "#VALORE!", "#RIF!", "#NOME?", "#NULLO!", "#VALOR!"),
    }
    # LibreOffice Calc's error values (Err:502 invalid argument, Err:522 circular...),
    # which its CSV export writes where Excel writes #VALUE!.
    | {f"Err:{code}" for code in range(501, 540)}
)

# Characters no ticket ID holds: Unicode's controls (Cc: C0, DEL, C1), format characters
# (Cf: zero-width space and joiners, bidi overrides, soft hyphen, BOM U+FEFF, tags), the
# rest of what Unicode says to show as nothing (Default_Ignorable_Code_Point: variation
# selectors, the combining grapheme joiner, Hangul fillers, Mongolian and Khmer ones) and
# the Braille blank (a cell of either looks empty, or like another ID), line and
# paragraph separators (Zl, Zp), surrogates (Cs), the replacement character U+FFFD (the
# file was read in the wrong encoding) and the noncharacters U+FFFE/U+FFFF. Spaces are
# not in it. Listed as code point ranges, so that no table is built at start-up.
_UNSAFE_RANGES = (
    (0x0000, 0x001F),
    (0x007F, 0x009F),
    (0x00AD, 0x00AD),
    (0x034F, 0x034F),
    (0x0600, 0x0605),
    (0x061C, 0x061C),
    (0x06DD, 0x06DD),
    (0x070F, 0x070F),
    (0x0890, 0x0891),
    (0x08E2, 0x08E2),
    (0x115F, 0x1160),
    (0x17B4, 0x17B5),
    (0x180B, 0x180F),
    (0x200B, 0x200F),
    (0x2028, 0x202E),
    (0x2060, 0x2064),
    (0x2066, 0x206F),
    (0x2800, 0x2800),
    (0x3164, 0x3164),
    (0xD800, 0xDFFF),
    (0xFE00, 0xFE0F),
    (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0),
    (0xFFF0, 0xFFFB),
    (0xFFFD, 0xFFFF),
    (0x110BD, 0x110BD),
    (0x110CD, 0x110CD),
    (0x13430, 0x13438),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0000, 0xE0FFF),
)
_UNSAFE = re.compile(
    "[" + "".join(f"{re.escape(chr(a))}-{re.escape(chr(b))}" for a, b in _UNSAFE_RANGES) + "]"
)
# fmt: off
_ASCII_NAMES = (
    "NUL", "SOH", "STX", "ETX", "EOT", "ENQ", "ACK", "BEL", "BS", "TAB", "LF", "VT", "FF",
    "CR", "SO", "SI", "DLE", "DC1", "DC2", "DC3", "DC4", "NAK", "SYN", "ETB", "CAN", "EM",
    "SUB", "ESC", "FS", "GS", "RS", "US",
)
_C1_NAMES = (
    "PAD", "HOP", "BPH", "NBH", "IND", "NEL", "SSA", "ESA", "HTS", "HTJ", "VTS", "PLD", "PLU",
    "RI", "SS2", "SS3", "DCS", "PU1", "PU2", "STS", "CCH", "MW", "SPA", "EPA", "SOS", "SGC",
    "SCI", "CSI", "ST", "OSC", "PM", "APC",
)
# fmt: on


# What trimming an ID removes from its ends: spaces (any Unicode space separator, such as
# the no-break space) and the whitespace controls tab, line feed, vertical tab, form feed
# and carriage return. Other characters Python counts as whitespace (the information
# separators U+001C-U+001F, NEL U+0085, U+2028, U+2029) are not trimmed but refused.
TRIM = " \t\n\x0b\x0c\r\u00a0\u1680\u202f\u205f\u3000" + "".join(map(chr, range(0x2000, 0x200B)))


def char_name(char: str) -> str:
    """``U+0009 TAB``, ``U+200B ZERO WIDTH SPACE``: what an error calls a character."""
    code = ord(char)
    if code < 0x20:
        name = _ASCII_NAMES[code]
    elif code == 0x7F:
        name = "DEL"
    elif 0x80 <= code <= 0x9F:
        name = _C1_NAMES[code - 0x80]
    elif 0xD800 <= code <= 0xDFFF:
        name = "SURROGATE"
    else:
        name = unicodedata.name(char, "NONCHARACTER")
    return f"U+{code:04X} {name}"


def _what(char: str) -> str:
    category = unicodedata.category(char)
    if char == "\ufffd":
        return (
            "a replacement character, left where the file's bytes did not decode (try --encoding)"
        )
    if category == "Cc":
        return "a control character"
    if category in ("Zl", "Zp"):
        return "a line break character"
    if category == "Cf":
        return "an invisible formatting character"
    if category == "Cs" or ord(char) & 0xFFFE == 0xFFFE:
        return "a character that is not text"
    return "an invisible character"


def unsafe_char(value: str) -> str | None:
    """The first character of ``value`` that no ticket ID holds, or None."""
    match = _UNSAFE.search(value)
    return match.group() if match else None


def unsafe_rows(values: list[str]) -> np.ndarray[Any, Any]:
    """Indices of the values holding a character no ticket ID holds, checked with numpy."""
    import numpy as np

    joined = " ".join(values)  # a space is safe, so a match always lies inside one value
    if joined.isascii():
        points = np.frombuffer(joined.encode("ascii"), dtype=np.uint8)
        hits = np.flatnonzero((points < 0x20) | (points == 0x7F))
    else:
        wide = np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        hits = np.flatnonzero((wide < 0x20) | ((wide >= 0x7F) & (wide <= 0x9F)))
        high = np.flatnonzero(wide >= 0xAD)  # usually few: accented letters and the like
        if len(high):
            points32 = wide[high]
            mask = np.zeros(len(high), dtype=bool)
            for low, top in _UNSAFE_RANGES[2:]:
                mask |= (points32 >= low) & (points32 <= top)
            hits = np.concatenate((hits, high[mask]))
    if not len(hits):
        return hits
    lengths = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
    starts = np.cumsum(lengths + 1) - (lengths + 1)
    return np.unique(np.searchsorted(starts, hits, side="right") - 1)


def long_rows(values: list[str]) -> np.ndarray[Any, Any]:
    """Indices of the values longer than :data:`MAX_ID` characters."""
    import numpy as np

    lengths = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
    return np.flatnonzero(lengths > MAX_ID)


def excel_error_rows(values: list[str]) -> np.ndarray[Any, Any]:
    """Indices of the values that are an Excel error such as ``#N/A``."""
    import numpy as np
    import pandas as pd

    joined = "".join(values)
    if "#" not in joined and "Err:" not in joined and "Loading..." not in joined:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(pd.Series(values, dtype=object).isin(EXCEL_ERRORS).to_numpy())


def row_code(source: str, linked: str) -> int:
    """The code :func:`bulklink.tables.inputs.scan` gives a row of two trimmed text IDs."""
    if len(source) > MAX_ID:
        return TOO_LONG_SOURCE
    if len(linked) > MAX_ID:
        return TOO_LONG_LINKED
    if source in EXCEL_ERRORS:
        return EXCEL_ERROR_SOURCE
    if linked in EXCEL_ERRORS:
        return EXCEL_ERROR_LINKED
    if unsafe_char(source):
        return CONTROL_SOURCE
    if unsafe_char(linked):
        return CONTROL_LINKED
    if not source or not linked:
        return (
            BLANK_BOTH
            if not source and not linked
            else BLANK_SOURCE
            if not source
            else BLANK_LINKED
        )
    return SELF_LINK if source == linked else SEND


def cell_code(kind: int, side: int) -> int:
    """The row code for an ID cell of ``kind`` (not 0) on ``side`` (0 source, 1 linked)."""
    if kind == LOST:
        return (LOST_DIGITS_SOURCE, LOST_DIGITS_LINKED)[side]
    return _KIND_BASE + 2 * (kind - DATE) + side


def _kind_text(code: int, column: str, value: str) -> str:
    kind = DATE + (code - _KIND_BASE) // 2
    if kind == FORMULA:
        fix = "open the file in Excel and save it, or paste the IDs as values"
    else:
        fix = "format the column as Text and retype the IDs"
    return f"{column} cell is {_KINDS[kind]} ({value}), not text; {fix}"


def invalid_text(code: int, source: str, linked: str) -> str:
    """Why a row with this code is not sent, naming the character or error it holds."""
    side = _SIDES.get(code)
    if side is None:
        return INVALID_REASONS[code]
    value = (source, linked)[side]
    if code in (NOT_AN_ID_SOURCE, NOT_AN_ID_LINKED):
        return f"{INVALID_REASONS[code]} ({value}); give IDs as text"
    if code >= _KIND_BASE:
        return _kind_text(code, _COLUMN[side], value)
    if code in (EXCEL_ERROR_SOURCE, EXCEL_ERROR_LINKED):
        kind = "Excel error" if value.startswith("#") else "spreadsheet error"
        return f"{kind} {value} in {_COLUMN[side]}"
    if code in (LOST_DIGITS_SOURCE, LOST_DIGITS_LINKED):
        return (
            f"Excel stored this ID as a number and lost digits ({_COLUMN[side]} {value}); "
            "format the column as text"
        )
    char = unsafe_char(value)
    if char is None:  # not reachable from scan; kept total for callers
        return INVALID_REASONS[code]
    return f"{('source', 'linked')[side]} ticket ID contains {_what(char)} ({char_name(char)})"
