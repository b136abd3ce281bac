"""How bulklink writes times, durations, compact JSON and untrusted text: one spelling each.

Every timestamp in every output (summary, store, journal, report, log) is UTC to the
second with a ``Z``; every duration reads the way the duration options take it; every
line that reaches a terminal, a log or a notice has its control characters made visible.
"""

from __future__ import annotations

import json
import math
import re
import time
from datetime import UTC, datetime
from typing import Any

#: Compact JSON (no spaces), as the PATCH body and the journal's lines are written: one
#: encoder made once, since ``json.dumps`` with any option makes a new one each call.
compact_json = json.JSONEncoder(separators=(",", ":")).encode
_STAMP = "%Y-%m-%dT%H:%M:%SZ"


def _finite_or_text(literal: str) -> float | str:
    number = float(literal)
    return number if math.isfinite(number) else literal


def answer_json(data: bytes | str) -> Any:
    """An API answer (or a journal line holding one) parsed as JSON is written: ``NaN``,
    ``Infinity`` and a float beyond a double's range (``1e400``), which Python's json
    reads as numbers no JSON or spreadsheet holds, are kept as the text the server sent.
    Raises what ``json.loads`` raises."""
    if isinstance(data, bytes):  # as json.loads reads bytes
        data = data.decode(json.detect_encoding(data), "surrogatepass")
    return _ANSWERS.decode(data)


#: Made once: ``json.loads`` with any option makes a new decoder each call.
_ANSWERS = json.JSONDecoder(parse_constant=str, parse_float=_finite_or_text)

# What a terminal acts on instead of showing: C0 controls (newline and tab included: a
# server's message must not start a line of its own), DEL, C1 (0x9b is a CSI on some
# terminals), and the bidi overrides and isolates that reorder what is shown.
# Lone surrogates too: a file name's bytes that are not UTF-8 (``caf\xe9.csv``) reach
# us as U+DC80-U+DCFF (surrogateescape), which no UTF-8 stream or JSON encoder can write.
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\u2028\u2029\ud800-\udfff]")


def utc_stamp(when: datetime | None = None) -> str:
    """``when`` (default now) as ``2026-12-01T02:30:00Z``; a naive datetime is refused,
    since guessing its zone would shift every stamp by hours."""
    if when is None:  # now, once per row: without making a datetime
        return time.strftime(_STAMP, time.gmtime())
    if when.tzinfo is None:
        raise ValueError("utc_stamp needs an aware datetime")
    return when.astimezone(UTC).strftime(_STAMP)


def parse_stamp(text: str) -> datetime:
    """A stamp back as an aware datetime (``Z`` or an offset, as older files wrote it)."""
    when = datetime.fromisoformat(text)
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def format_duration(seconds: float) -> str:
    """``4.2s``, ``1m02s``, ``10m``, ``2h``, ``1h30m``: what ``--deadline`` would accept.

    Under a minute a tenth of a second still matters (a notice's run time); above it,
    whole seconds, and units that are all zero are left out.
    """
    if seconds < 60:
        return f"{round(seconds, 1):g}s"
    hours, rest = divmod(round(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    if not hours:
        return f"{minutes}m{secs:02d}s" if secs else f"{minutes}m"
    if not (minutes or secs):
        return f"{hours}h"
    return f"{hours}h{minutes:02d}m" + (f"{secs:02d}s" if secs else "")


def _visible(match: re.Match[str]) -> str:
    code = ord(match.group())
    if 0xDC80 <= code <= 0xDCFF:  # a byte of a name that is not UTF-8: shown as that byte
        code -= 0xDC00
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_controls(text: str) -> str:
    """``text`` safe for a terminal, a log or a notice: each control character as a
    visible escape, so ``\\x1b[2J`` stays text and a server's newline cannot start a line
    of its own. The report keeps the data as it came."""
    return _CONTROLS.sub(_visible, text)


_NAME_BYTES = re.compile("[\udc80-\udcff]")


def escape_name_bytes(text: str) -> str:
    """Only the bytes of a name that are not UTF-8 (``caf\\xe9.csv`` as surrogateescape
    gives it) made visible as ``\\xe9``: for text that must be UTF-8 but keeps its other
    characters (a notice's summary)."""
    return _NAME_BYTES.sub(_visible, text)


def has_controls(text: str) -> bool:
    """Whether ``text`` holds a character :func:`escape_controls` would escape."""
    return _CONTROLS.search(text) is not None
