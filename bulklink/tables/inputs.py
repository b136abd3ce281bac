"""Reading the input table into pairs: formats, encodings, delimiters, columns, validation.

Every cell is read as text, so an ID is sent exactly as written (``00123`` stays
``00123``). A run reads a private :class:`Snapshot` of the input, taken once at the
start, so the rows sent are the rows validated whatever happens to the file meanwhile.
The snapshot is scanned once up front (validation, duplicate detection, content hash)
keeping only a few bytes per row, and later re-read in chunks, so memory stays flat
however large the file is.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import itertools
import json
import math
import numbers
import os
import re
import stat
import sys
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from bulklink._fs import create_temp
from bulklink.errors import DiskError, InputError, UsageError
from bulklink.models import Pair
from bulklink.options import ReadOptions
from bulklink.tables.ids import ALREADY as ALREADY
from bulklink.tables.ids import BLANK_BOTH as BLANK_BOTH
from bulklink.tables.ids import BLANK_LINKED as BLANK_LINKED
from bulklink.tables.ids import BLANK_SOURCE as BLANK_SOURCE
from bulklink.tables.ids import (
    CONTROL_LINKED,
    CONTROL_SOURCE,
    EXCEL_ERROR_LINKED,
    EXCEL_ERROR_SOURCE,
    EXTRA_CELLS,
    NOT_AN_ID_LINKED,
    NOT_AN_ID_SOURCE,
    TOO_LONG_LINKED,
    TOO_LONG_SOURCE,
    TRIM,
    cell_code,
    excel_error_rows,
    invalid_text,
    long_rows,
    row_code,
    unsafe_char,
    unsafe_rows,
)
from bulklink.tables.ids import DUPLICATE as DUPLICATE
from bulklink.tables.ids import INVALID_REASONS as INVALID_REASONS
from bulklink.tables.ids import KEEP as KEEP
from bulklink.tables.ids import SELF_LINK as SELF_LINK
from bulklink.tables.ids import SEND as SEND
from bulklink.tables.report.schema import RESULT_COLUMNS
from bulklink.tables.workbook import id_text

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

CHUNK_ROWS = 50_000
DELIMITERS = (",", ";", "\t", "|")
_HASH_KEYS = ("bulklink-pair-k1", "bulklink-pair-k2")  # pandas wants 16-char keys
_ALIASES = {"source": "sourceticketid", "linked": "linkedticketid"}
_CANONICAL = {"sourceticketid": "sourceTicketId", "linkedticketid": "linkedTicketId"}
# Byte-order marks, longest first: UTF-32 LE starts with the UTF-16 LE mark.
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
# What a file that is not text at all starts with, as the error names it.
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"%PDF-", "a PDF document"),
    (b"PK\x03\x04", "a zip archive"),
    (b"PK\x05\x06", "a zip archive"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"BZh", "a bzip2 archive"),
    (b"\xfd7zXZ\x00", "an xz archive"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"Rar!\x1a\x07", "a RAR archive"),
    (b"\x28\xb5\x2f\xfd", "a zstd archive"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an old Office file (.xls?); save it as .xlsx or CSV"),
    (b"\x7fELF", "a program"),
    (b"SQLite format 3\x00", "an SQLite database"),
)
_BINARY_SHARE = 0.05  # control characters in text this share of the start: not text
_HEAD = 1 << 16  # the start of a text file kept to sniff it, or more: its header row whole
_HEADER_MAX = 1 << 24  # a header row longer than this is no table's
_SEP_LINE = re.compile(r"sep=(.)[ \t]*(?:\r\n|\r|\n|$)")  # Excel's delimiter line, any line end
STILL_CHANGING = "input is still changing (being written?)"


def caller_id(value: object) -> tuple[str, bool]:
    """An ID from a Python caller as the reader takes a cell: text trimmed, an int as its
    digits, a whole float as its digits while a float holds them exactly (``123.0`` is
    ``123``), None and NaN (a pandas blank) blank; and False for anything else (a bool,
    bytes, a list, ``1e20``, ``1.5``, infinity), whose text is shown but never sent."""
    if value is None:
        return "", True
    if isinstance(value, str):
        return value.strip(TRIM), True
    if isinstance(value, bool):  # an Integral, but no one's ID
        return str(value), False
    if isinstance(value, numbers.Integral):  # numpy's integers too
        return str(int(value)), True
    if isinstance(value, numbers.Real):
        number = float(value)
        if math.isnan(number):
            return "", True
        text, cut = id_text(number)
        return text, math.isfinite(number) and number.is_integer() and not cut
    return str(value), False


def caller_pair(source: object, linked: object) -> tuple[str, str, str | None]:
    """A pair from a Python caller as text, and why it cannot be sent (None: it can)."""
    (source_text, source_ok), (linked_text, linked_ok) = caller_id(source), caller_id(linked)
    if not (source_ok and linked_ok):
        code = NOT_AN_ID_LINKED if source_ok else NOT_AN_ID_SOURCE
        return source_text, linked_text, invalid_text(code, source_text, linked_text)
    return source_text, linked_text, invalid_reason(source_text, linked_text)


def invalid_reason(source: str, linked: str) -> str | None:
    """Why a pair cannot be sent, or None: the rule :func:`scan` applies to whole files."""
    code = row_code(source, linked)
    return None if code == SEND else invalid_text(code, source, linked)


def _norm(name: str) -> str:
    """Fold case, spaces, underscores and dashes: ``Source Ticket ID`` == ``source_ticket_id``."""
    return re.sub(r"[\s_\-]+", "", name.strip().lower())


_DETECT = ReadOptions()  # every column, encoding and delimiter detected


@dataclass(slots=True)
class Chunk:
    """A slice of the input: ``start`` is the 0-based index of its first data row."""

    start: int
    source: list[str]
    linked: list[str]
    columns: dict[str, list[str]]
    #: The file the snapshot was taken of changed before this chunk was read.
    input_changed: bool = False
    #: Rows with a value past the header's last column (a CSV's), or None for none.
    overfull: np.ndarray[Any, Any] | None = None
    end: int = field(init=False)  # one past its last row: read for every row written

    def __post_init__(self) -> None:
        self.end = self.start + len(self.source)

    def __len__(self) -> int:
        return len(self.source)


def _trimmed(cells: list[str]) -> list[str]:
    """ID cells (always text: every reader makes them so) without surrounding blanks.

    ``map`` of ``str.strip`` rather than pandas' ``.str.strip``, which calls a Python
    lambda per cell (the cost: benchmarks/NOTES.md).
    """
    return list(map(str.strip, cells, itertools.repeat(TRIM, len(cells))))


_Identity = tuple[int, int, int, int]


def _identity(info: os.stat_result) -> _Identity:
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


class Snapshot:
    """A private copy of the input, taken once at the start of a run: every pass reads
    it, so the rows sent are the rows validated however the file changes meanwhile.

    Standard input, a pipe and a FIFO are copied as streams. A regular file is watched:
    one whose size or mtime changes while it is copied is refused (a nightly export still
    being written), and :meth:`changed` tells whether it changed since (or was replaced by
    a rename, or removed). The copy is created like any temporary file of ours beside
    ``beside`` (``O_EXCL``, mode 0600, swept after a kill) and removed by :meth:`close`.
    """

    def __init__(self, given: str | Path, beside: Path) -> None:
        self.name = "standard input" if str(given) == "-" else os.fsdecode(given)
        self.origin = None if str(given) == "-" else Path(given)
        self.stream = True  # a stream (stdin, pipe, FIFO), not a file at rest
        self._seen: _Identity | None = None
        fd, self.path = create_temp(beside, "input", 0o600)
        try:
            with os.fdopen(fd, "wb") as out:
                size = self._copy(out)
        except BaseException as exc:
            self.close()
            if isinstance(exc, OSError):  # the copy's own writes: a full disk
                raise DiskError(exc, self.path) from exc
            raise
        if size == 0:  # a stream (a regular file of 0 bytes was refused before)
            self.close()
            empty = f"input is empty: {self.name}" if self.origin else "standard input is empty"
            raise InputError(empty)

    def _copy(self, out: IO[bytes]) -> int:
        if self.origin is None:
            if sys.stdin is None:  # started with standard input closed (``<&-``)
                raise InputError("standard input is closed: give the input file, or pipe it in")
            return self._copy_stream(sys.stdin.buffer, out)
        info = self._stat(self.origin)
        try:
            fd = os.open(self.origin, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise InputError(f"cannot read {self.name}: {exc.strerror}") from None
        with os.fdopen(fd, "rb") as src:
            if not stat.S_ISREG(info.st_mode):
                return self._copy_stream(src, out)
            self.stream = False
            self._seen = _identity(os.fstat(fd))
            copied = self._copy_stream(src, out)
            # The same file, of the same size and mtime, from before we opened it to after
            # the copy; and the copy holds as many bytes as it had.
            seen = {_identity(info), _identity(os.fstat(fd)), self._current(), self._seen}
            if len(seen) > 1 or copied != self._seen[2]:
                raise InputError(f"{STILL_CHANGING}: {self.name}")
            return copied

    def _stat(self, path: Path) -> os.stat_result:
        try:
            info = path.stat()
        except FileNotFoundError:
            raise InputError(f"input file not found: {self.name}") from None
        except OSError as exc:
            raise InputError(f"cannot read {self.name}: {exc.strerror}") from None
        if stat.S_ISDIR(info.st_mode):
            raise InputError(f"input is a directory, not a file: {self.name}")
        if stat.S_ISREG(info.st_mode) and info.st_size == 0:
            raise InputError(f"input file is empty (0 bytes): {self.name}")
        return info

    def _copy_stream(self, src: IO[bytes], out: IO[bytes]) -> int:
        """Everything ``src`` holds into the copy. A stream's bytes are copied as they
        come (``read1``), not once a block is full."""
        read = getattr(src, "read1", src.read)
        total = 0
        while True:
            try:
                block = read(1 << 20)
            except OSError as exc:
                raise InputError(f"cannot read {self.name}: {exc.strerror or exc}") from None
            if not block:
                return total
            out.write(block)
            total += len(block)

    def _current(self) -> _Identity | None:
        assert self.origin is not None
        try:
            return _identity(self.origin.stat())
        except OSError:
            return None

    def changed(self) -> bool:
        """Whether the file the copy was taken of is no longer that file (a stream: never)."""
        return self._seen is not None and self._current() != self._seen

    def close(self) -> None:
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> Snapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Table:
    """An input file opened for (repeated) chunked reading, with its columns resolved."""

    def __init__(
        self, source: Path | Snapshot, options: ReadOptions = _DETECT, *, report: bool = False
    ) -> None:
        self.snapshot = source if isinstance(source, Snapshot) else None
        self.path = source.path if isinstance(source, Snapshot) else source
        #: The input as messages name it (the file given, not its snapshot).
        self.name = source.name if isinstance(source, Snapshot) else os.fsdecode(source)
        stream = self.snapshot is not None and self.snapshot.stream
        self.options = options
        self.kind = _kind(Path(self.name), report, stream=stream)
        self.report = report
        self._skip = 0  # lines before the header: Excel's ``sep=;``
        self._lone_cr = False  # a CR byte not followed by LF: the file may end lines in CR alone
        self._quoting_checked = False  # see _refuse_stray_quotes
        self._guessed = False  # the encoding is cp1252 for want of a better one: see _refuse_cjk
        #: ``"\r"`` when every line ends in a CR alone (a classic Mac export), else None.
        self._line_end: str | None = None
        self._unnamed: set[str] = set()  # trailing columns with no name: kept once filled
        self.digest = ""
        self._frame: pd.DataFrame | None = None
        self._kinds: dict[str, np.ndarray[Any, Any]] = {}  # ID cells of an odd kind (xlsx)
        self.encoding = options.encoding or "utf-8"
        self.delimiter = options.delimiter or ("\t" if self.kind == "tsv" else ",")
        self.source_col = self.linked_col = ""
        self.columns = self._open()
        self.other_cols = [c for c in self.columns if c not in (self.source_col, self.linked_col)]

    def _resolve(self, header: list[str], where: str = "", hint: str = "") -> list[str]:
        """Make the header unique and find the ID columns in it (errors say ``where``)."""
        columns = _unique(header)
        if self.report:
            wanted = (self.options.source_col, self.options.linked_col)
            missing = [c for c in wanted if c not in columns]
            if missing:
                raise InputError(f"{self.name} is not a bulklink report: no column {missing[0]}")
        self.source_col, self.linked_col = _pick_columns(columns, header, self.options, where, hint)
        named = [i for i, name in enumerate(header) if name.strip()]
        tail = columns[named[-1] + 1 :] if named else []
        self._unnamed = set(tail) - {self.source_col, self.linked_col}
        return columns

    def _open(self) -> list[str]:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            raise InputError(f"input file not found: {self.name}") from None
        except OSError as exc:
            raise InputError(f"cannot read {self.name}: {exc.strerror}") from None
        if self.path.is_dir():
            raise InputError(f"input is a directory, not a file: {self.name}")
        if size == 0:
            raise InputError(f"input file is empty (0 bytes): {self.name}")
        self._refuse_options_of_another_kind()
        if self.kind == "xlsx":
            return self._open_excel()
        if self.kind == "jsonl":
            return self._open_jsonl()
        return self._open_text()

    def _refuse_options_of_another_kind(self) -> None:
        """An option the input's kind has no use for was given for a reason: taken
        silently, the run would not do what was asked (the sheet named is not read)."""
        given = self.options
        if given.sheet is not None and self.kind != "xlsx":
            raise UsageError(f"--sheet is for .xlsx files; {self.name} is read as {self.kind}")
        if self.kind in ("xlsx", "jsonl"):
            for option, value in (("--encoding", given.encoding), ("--delimiter", given.delimiter)):
                if value is not None:
                    raise UsageError(f"{option} is for CSV files; {self.name} is .{self.kind}")

    def _open_text(self) -> list[str]:
        head, utf8 = self._hash_and_check()
        if self.options.encoding is None:
            self.encoding = _bom_encoding(head) or ("utf-8-sig" if utf8 else "cp1252")
        text = self._head_text(head)  # refuses what is no text first
        if self.options.encoding is None and self.encoding == "cp1252":
            self._refuse_mixed_encodings()
            self._guessed = True
        sep = _SEP_LINE.match(text)
        if sep is not None:  # Excel's own line naming the delimiter: it is no header
            text, self._skip = text[sep.end() :], 1
            self.delimiter = self.options.delimiter or sep.group(1)
        elif self.options.delimiter is None and self.kind == "csv":
            # The header whole, and what else the first 64 KiB hold (never a row's huge cell).
            self.delimiter = _sniff_delimiter(text[: max(_HEAD, text.find("\n") + 1)])
        if self._lone_cr:
            self._line_end = self._line_ends()
        try:
            rows = csv.reader(io.StringIO(text, newline=None), delimiter=self.delimiter)
            header = [h.strip() for h in next((row for row in rows if row), [])]
        except csv.Error as exc:
            raise InputError(f"{self.name} is not valid CSV: {exc}") from None
        hint = ""
        if _misdecoded(header):
            hint = (
                f"; the header looks mis-decoded (read as {self.encoding}): "
                "give the file's encoding with --encoding (utf-8, cp1252, utf-16...)"
            )
        return self._resolve(header, hint=hint)

    def _hash_and_check(self) -> tuple[bytes, bool]:
        """Hash the whole file, keep its first 64 KiB (and on to the end of the header
        row and the line after it, however long), and tell whether it is all UTF-8."""
        digest = hashlib.sha256()
        decoder = codecs.getincrementaldecoder("utf-8")()
        utf8 = self.options.encoding is None
        head = bytearray()
        try:
            with self.path.open("rb") as fh:
                while block := fh.read(1 << 20):
                    digest.update(block)
                    if not head:  # a UTF-16/32 mark decides; a UTF-8 one is checked on
                        utf8 = utf8 and _bom_encoding(block) in (None, "utf-8-sig")
                    if len(head) < _HEAD or (_lines(head) < 3 and len(head) < _HEADER_MAX):
                        head += block
                    utf8 = utf8 and _decodes(decoder, block)
                    # A superset (a CRLF cut by the block's end counts): the text decides.
                    self._lone_cr = self._lone_cr or block.count(b"\r") > block.count(b"\r\n")
        except OSError as exc:
            raise InputError(f"cannot read {self.name}: {exc.strerror}") from None
        self.digest = digest.hexdigest()
        # ... and a sequence cut off at the very end is no UTF-8 either.
        return self._cut_head(bytes(head)), utf8 and _decodes(decoder, b"", final=True)

    def _line_ends(self) -> str | None:
        """``"\r"`` for a file whose lines all end in a CR alone (a classic Mac export),
        which pandas' parser is then told; None otherwise. A file mixing such line ends
        with LF ones is refused where pandas would misread it: after a blank line ended by
        a CR alone it drops the empty first cell of the next line, whose cells then shift
        left, so another pair would be sent (``,T2,L2`` read as ``T2,L2``)."""
        lone = lf = blank_cr = False
        shifted = 0  # the first blank line ended by a CR alone before a leading empty cell
        try:
            # newline="": lines split at CR, LF and CRLF alike, each keeping its end.
            with self.path.open(encoding=self.encoding, errors="replace", newline="") as fh:
                for number, line in enumerate(fh, 1):
                    if blank_cr and not shifted and line.startswith(self.delimiter):
                        shifted = number - 1
                    lf = lf or line.endswith("\n")
                    blank_cr = line.endswith("\r")
                    if blank_cr:
                        lone, blank_cr = True, not line[:-1].strip(" \t")
        except OSError as exc:
            raise InputError(f"cannot read {self.name}: {exc.strerror}") from None
        if shifted and lf:
            raise InputError(
                f"{self.name}: line {shifted} is blank and ends in a carriage return alone, "
                "and the next starts with an empty cell, which would be read shifted; save "
                "the file with one kind of line end (CRLF or LF)"
            )
        return "\r" if lone and not lf else None

    def _refuse_cjk(self, source: list[str], linked: list[str], start: int) -> None:
        """A file that is not UTF-8 is read as cp1252. One whose IDs then look like East
        Asian text read wrongly (Excel's "CSV" on Japanese, Chinese or Korean Windows)
        would have them sent garbled (``チケット1`` as ``ƒ`ƒPƒbƒg1``): refused, asking for
        --encoding. Looked at once, on the first ID beyond ASCII: when, read as cp1252,
        it holds what no Western ID does (a symbol such as ``¼`` or ``“``, ``ƒ``, a
        backtick: the bytes of double-byte characters), the whole file is text in a
        double-byte encoding, and the ID read in it holds East Asian characters. IDs of
        accented letters (``AÇÃO``, ``Müller``) pass."""
        ids = next((ids for ids in (source, linked) if not "".join(ids).isascii()), None)
        if ids is None:
            return
        self._guessed = False
        row, shown = next((n, v) for n, v in enumerate(ids, start + 1) if not v.isascii())
        if not any(_misread(char) for char in shown):
            return  # letters only (AÇÃO, Grüße): cp1252 text as it is
        decoders = {codec: codecs.getincrementaldecoder(codec)() for codec in _EAST_ASIAN}
        try:
            with self.path.open("rb") as fh:
                while decoders and (block := fh.read(1 << 20)):
                    decoders = {c: d for c, d in decoders.items() if _decodes(d, block)}
        except OSError as exc:
            raise InputError(f"cannot read {self.name}: {exc.strerror}") from None
        for codec, decoder in decoders.items():
            if not _decodes(decoder, b"", final=True):
                continue
            meant = shown.encode("cp1252", "ignore").decode(codec, "ignore")
            if any(unicodedata.east_asian_width(char) in "WFH" for char in meant):
                raise InputError(
                    f"{self.name} is not UTF-8, and read as cp1252 its IDs look like East "
                    f"Asian text read in the wrong encoding (row {row}: {shown!r}); give its "
                    "encoding with --encoding: cp932 (Japanese), cp949 (Korean), big5 "
                    "(Traditional Chinese), gb18030 (Simplified Chinese), or cp1252 if it "
                    "is that"
                )

    def _refuse_stray_quotes(self) -> None:
        """A quoted cell may span lines; one whose closing quote is followed by more text
        began with a stray quote (``"Urgent: printer`` in a dump that quotes nothing), and
        the lines up to the next quote, rows and all, were read as that one cell: their
        pairs would be neither sent nor reported. Refused, naming the lines (the strict
        reading of RFC 4180, once, when a first cell spanning lines is seen)."""
        if self._quoting_checked:
            return
        self._quoting_checked = True
        try:
            with self.path.open(encoding=self.encoding, errors="replace", newline="") as fh:
                rows = csv.reader(fh, delimiter=self.delimiter, strict=True)
                while (stray := _stray_quote(rows)) is not None:
                    start, end = stray
                    if end > start:  # "ok"x within one line hides no row: read on
                        raise InputError(
                            f"{self.name}: lines {start}-{end} were read as one cell: a "
                            "quote that opens a cell is closed by one followed by more text "
                            "(a stray quote at the start of a cell?); remove it, or quote "
                            'the cell ("" for a quote inside)'
                        )
        except OSError as exc:
            raise InputError(f"cannot read {self.name}: {exc.strerror}") from None

    def _refuse_hidden_rows(self, spanning: dict[str, list[str]], start: int) -> None:
        """A stray quote closed right before a delimiter passes the strict reading too,
        and still hides the rows between: a cell spanning lines, one of which is shaped
        as a whole row of this file (as many cells as the header, both IDs one word),
        holds rows no run would send or report. Refused, naming the row; the shape is
        narrow (both IDs a word with a digit), so a note with commas in it is read."""
        width = len(self.columns)
        at = (self.columns.index(self.source_col), self.columns.index(self.linked_col))
        for name, column in spanning.items():  # the columns with a cell spanning lines
            for index, cell in enumerate(column):
                lines = cell.splitlines()[1:] if "\n" in cell or "\r" in cell else ()
                if any(_row_shaped(line.split(self.delimiter), width, at) for line in lines):
                    raise InputError(
                        f"{self.name}: row {start + index + 1}'s {name} cell spans lines that "
                        "are rows of their own (a stray quote before it?): they would be "
                        "neither sent nor reported; remove the quote, or quote the cell"
                    )

    def _refuse_mixed_encodings(self) -> None:
        """A file that is not all UTF-8 but holds UTF-8 text (two exports pasted together)
        has no one encoding: read as cp1252, its UTF-8 IDs would be sent garbled
        (``MÃ¼ller``). Refused, naming the first line that is not UTF-8."""
        decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
        first_bad: int | None = None  # the line of the first byte that is not UTF-8
        utf8_seen = False
        lines = 0
        try:
            with self.path.open("rb") as fh:
                while block := fh.read(1 << 20):
                    text = decoder.decode(block)
                    if first_bad is None and (bad := _NOT_UTF8.search(text)) is not None:
                        first_bad = lines + _lines(text[: bad.start()]) + 1
                    utf8_seen = utf8_seen or _UTF8_TEXT.search(text) is not None
                    if utf8_seen and first_bad is not None:
                        raise self._mixed(first_bad)
                    lines += _lines(text)
        except OSError as exc:
            raise InputError(f"cannot read {self.name}: {exc.strerror}") from None

    def _mixed(self, line: int) -> InputError:
        return InputError(
            f"{self.name} mixes encodings: it holds UTF-8 text, but line {line} is not "
            "UTF-8 (two exports pasted together?); save it in one encoding, or give "
            "--encoding to read all of it in one"
        )

    def _cut_head(self, head: bytes) -> bytes:
        """The first 64 KiB, or more: up to the end of the third line (Excel's ``sep=``
        line, the header, a row to sniff the delimiter from), so no header is cut."""
        ends = [m.end() for _, m in zip(range(3), _LINE_END_BYTES.finditer(head), strict=False)]
        if not ends and len(head) >= _HEADER_MAX:
            raise InputError(f"{self.name}: the header row is longer than {_HEADER_MAX >> 20} MiB")
        return head[: max(_HEAD, ends[-1])] if ends else head

    def _head_text(self, head: bytes) -> str:
        """The start of the file as text, refusing what is no text at all."""
        not_text = _not_text(head)
        if not_text:
            raise InputError(f"{self.name} is not a CSV text file: it looks like {not_text}")
        try:
            text = codecs.getincrementaldecoder(self.encoding)("replace").decode(head)
        except LookupError:
            raise InputError(f"unknown encoding: {self.options.encoding}") from None
        except UnicodeError as exc:  # UTF-16/32 without a byte-order mark, say
            raise InputError(f"{self.name} cannot be read as {self.encoding}: {exc}") from None
        text = text.removeprefix("\ufeff")
        # Text in UTF-8 may hold any character (a test file of hostile IDs, say); random
        # bytes never are UTF-8, and read as cp1252 they are full of control characters.
        guessed = self.options.encoding is None and self.encoding == "cp1252"
        if guessed and _binary_share(text) > _BINARY_SHARE:
            raise InputError(
                f"{self.name} is not a CSV text file: it holds binary data "
                f"(read as {self.encoding}; give --encoding if it is text)"
            )
        if not text.strip():
            raise InputError(f"input file has no header row: {self.name}")
        return text

    def _open_excel(self) -> list[str]:
        import numpy as np
        import pandas as pd

        from bulklink.tables.workbook import read_sheet

        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise InputError(f"cannot read {self.name}: {exc.strerror}") from None
        self.digest = hashlib.sha256(data + b"\0" + (self.options.sheet or "").encode()).hexdigest()

        def pick(header: list[str], where: str, hint: str) -> list[int]:
            columns = self._resolve(header, where, hint)
            return [columns.index(self.source_col), columns.index(self.linked_col)]

        sheet = read_sheet(data, Path(self.name), self.options.sheet, pick, report=self.report)
        columns = _unique(sheet.header)  # the header may have grown with cells beyond it
        self._frame = pd.DataFrame(
            {
                name: pd.Series(values, dtype=object)
                for name, values in zip(columns, sheet.columns, strict=True)
            },
            columns=columns,
        )
        self._kinds = {
            columns[i]: np.asarray(kinds, dtype=np.uint8) for i, kinds in sheet.kinds.items()
        }
        return columns

    def _open_jsonl(self) -> list[str]:
        """A JSON-lines report: values keep their JSON types; IDs are strings."""
        import pandas as pd

        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise InputError(f"cannot read {self.name}: {exc.strerror}") from None
        self.digest = hashlib.sha256(data).hexdigest()
        records = []
        # Split on newlines only: str.splitlines() would also cut at U+2028 inside a string.
        for number, line in enumerate(data.decode("utf-8-sig", "replace").split("\n"), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except (ValueError, RecursionError):
                raise InputError(f"{self.name}: line {number} is not JSON") from None
            records.append(self._checked_record(record, f"{self.name}: line {number}"))
        columns = list(dict.fromkeys(k for record in records for k in record))
        # Built column by column as objects: from_records would turn an int column with a
        # null in it into floats (42 -> 42.0, and 20-digit IDs lose digits).
        frame = pd.DataFrame(
            {c: pd.Series([r.get(c) for r in records], dtype=object) for c in columns},
            columns=columns,
        )
        for name in (self.options.source_col, self.options.linked_col):
            if name in frame.columns:
                frame[name] = frame[name].map(lambda v: "" if v is None else str(v))
        self._frame = frame
        return self._resolve(columns)

    def _checked_record(self, record: Any, where: str) -> dict[str, Any]:
        """One line of a JSON-lines report, refused unless it is a row bulklink can read."""
        if not isinstance(record, dict):
            raise InputError(
                f"{where} is {_json_kind(record)}, not an object "
                "(each line of a report is one row as an object)"
            )
        ids = (self.options.source_col, self.options.linked_col)
        for name in {*RESULT_COLUMNS, *ids}:
            if isinstance(record.get(name), dict | list):
                raise InputError(
                    f"{where}: {name} is {_json_kind(record[name])}, not a single value"
                )
        for name in ids:
            value = record.get(name)
            # A whole number is its digits; a bool or a float is no ID anyone wrote (str()
            # would send True or 1e+20).
            if isinstance(value, bool | float):
                raise InputError(
                    f"{where}: {name} is {_json_kind(value)} ({json.dumps(value)}), "
                    "not the text of a ticket ID"
                )
        return record

    @property
    def has_odd_cells(self) -> bool:
        """Some ID cell is a number Excel cut short, a date, a time, a boolean or a formula
        never calculated (only an .xlsx file can hold one)."""
        return bool(self._kinds)

    def cell_kinds(self, start: int, stop: int) -> tuple[np.ndarray[Any, Any] | None, ...]:
        """The kinds (:mod:`bulklink.tables.ids`) of the source and linked cells of rows
        ``start:stop``, or None for a column of text and exact numbers only."""
        return tuple(
            kinds[start:stop] if kinds is not None else None
            for kinds in (self._kinds.get(self.source_col), self._kinds.get(self.linked_col))
        )

    def _read_frames(self, chunk_rows: int) -> Iterator[pd.DataFrame]:
        if self._frame is not None:
            for start in range(0, len(self._frame), chunk_rows):
                yield self._frame.iloc[start : start + chunk_rows]
            return
        yield from read_csv(
            self.path,
            self.columns,
            self.delimiter,
            self.encoding,
            chunk_rows,
            Path(self.name),
            skip=self._skip,
            spill=SPILL_COLUMNS,
            line_end=self._line_end,
        )

    def chunks(self, chunk_rows: int | None = None) -> Iterator[Chunk]:
        """Yield the table in order, IDs trimmed; other columns exactly as read.

        Each chunk says whether the file the snapshot was taken of has changed by the
        time it was read. Trailing columns with no name that hold no value in any row
        (an export padding every row with delimiters) are dropped after the first pass.
        """
        chunk_rows = chunk_rows or CHUNK_ROWS  # read here, so a test can make chunks small
        start = 0
        filled: set[str] = set()
        for frame in self._read_frames(chunk_rows):
            frame, overfull = _overfull(frame, len(self.columns))
            source = _trimmed(frame[self.source_col].tolist())
            linked = _trimmed(frame[self.linked_col].tolist())
            columns = {c: frame[c].tolist() for c in self.other_cols}
            if self._frame is None:  # a CSV's
                cells = {self.source_col: source, self.linked_col: linked, **columns}
                spanning = {name: col for name, col in cells.items() if _line_break_in(col)}
                if spanning:  # the usual chunk has no cell spanning lines: nothing to look at
                    self._refuse_stray_quotes()
                    self._refuse_hidden_rows(spanning, start)
            if self._guessed:
                self._refuse_cjk(source, linked, start)
            filled.update(c for c in self._unnamed if any(v not in ("", None) for v in columns[c]))
            changed = self.snapshot is not None and self.snapshot.changed()
            yield Chunk(start, source, linked, columns, changed, overfull)
            start += len(source)
        if self._unnamed:
            empty, self._unnamed = self._unnamed - filled, set()
            self.other_cols = [c for c in self.other_cols if c not in empty]


def _misread(char: str) -> bool:
    """A character of an ID read as cp1252 that Western text does not put in an ID: a
    symbol, a number sign or punctuation beyond ASCII, the florin ``ƒ``, a backtick."""
    if char.isascii():
        return char == "`"
    return char == "\u0192" or not unicodedata.category(char).startswith("L")


#: Double-byte encodings Excel writes "CSV" in on East Asian Windows (Shift-JIS, Korean,
#: Big5, GBK), tried on a file that is not UTF-8 whose IDs are not ASCII read as cp1252.
_EAST_ASIAN = ("cp932", "cp949", "big5", "gb18030")


def _stray_quote(rows: Any) -> tuple[int, int] | None:
    """Read ``rows`` (a strict csv reader) on to a quoted cell whose closing quote is
    followed by more text: the lines its record spans (first, last); None at the end."""
    start = rows.line_num + 1
    try:
        for _ in rows:
            start = rows.line_num + 1
    except csv.Error as exc:
        if "expected after" in str(exc):
            return start, int(rows.line_num)
    return None  # the end, or an error not about quoting (a field past the module's limit)


def _row_shaped(fields: list[str], width: int, ids: tuple[int, int]) -> bool:
    """A line's cells look like a whole row: the header's count, and in the ID columns
    one word holding a digit each (a note's ``Tomorrow, ASAP, thanks`` is no row)."""
    return len(fields) == width and all(
        (value := fields[i].strip(TRIM))
        and not any(char.isspace() for char in value)
        and any(char.isdigit() for char in value)
        for i in ids
    )


def _line_break_in(cells: list[str]) -> bool:
    joined = "".join(cells)  # one pass at C speed over the chunk's column
    return "\n" in joined or "\r" in joined


def _overfull(frame: pd.DataFrame, width: int) -> tuple[pd.DataFrame, np.ndarray[Any, Any] | None]:
    """The frame without its spill columns (see :func:`read_csv`), and the rows with a
    value in one (None for none): a cell of blanks only is no value, as no blank ID is."""
    import numpy as np

    spill = list(frame.columns[width:])
    if not spill:
        return frame, None
    cells = frame[spill].to_numpy()
    if not cells.any():  # the usual chunk: "" everywhere, told at C speed
        return frame.drop(columns=spill), None
    found = np.array([any(cell.strip(TRIM) for cell in row) for row in cells], dtype=bool)
    return frame.drop(columns=spill), found if found.any() else None


#: Columns read past the header's last one, to see a row that has more cells than it.
SPILL_COLUMNS = 8


def read_csv(
    source: Path | IO[bytes],
    columns: list[str],
    delimiter: str,
    encoding: str,
    chunk_rows: int,
    name: Path,
    *,
    skip: int = 0,
    spill: int = 0,
    line_end: str | None = None,
) -> Iterator[pd.DataFrame]:
    """A CSV file's rows after its header, in chunks, every cell the text as written.

    The one CSV parser for rows (an input, a report, the report writer's own file): one
    set of rules and no field-size limit. ``name`` is the file as errors call it.
    ``spill`` more columns are read past the header's (named by position, after it), so
    that a row with more cells than the header shows: an empty one is a trailing
    delimiter, a value means the row's cells have shifted. A file with a row wider still
    (an Excel export padding a blank row with delimiters) is read again from its start
    with room for it, the rows already given skipped. ``line_end`` ``"\\r"``: every line
    ends in a CR alone (see :meth:`Table._line_ends`).
    """
    given = 0
    while True:
        try:
            frames = _csv_frames(
                source, columns, delimiter, encoding, chunk_rows, skip, spill, line_end
            )
            for frame in frames:
                if given >= len(frame):
                    given -= len(frame)
                    continue
                yield frame.iloc[given:] if given else frame
                given = 0
            return
        except _TooWide as wide:
            if not spill or not isinstance(source, Path) or wide.cells - len(columns) > MAX_SPILL:
                raise InputError(
                    f"{name} is not valid CSV: line {wide.line} has {wide.cells} cells where "
                    f"the header has {len(columns)} (a cell holding the delimiter unquoted?)"
                ) from None
            # At least twice the room each time: rows ever wider cost a few reads, not one each.
            spill = min(max(wide.cells - len(columns), 2 * spill), MAX_SPILL)
            given = wide.given
        except (ValueError, csv.Error, UnicodeError, OverflowError, MemoryError) as exc:
            # ParserError, EmptyDataError and UnicodeDecodeError are ValueErrors.
            reason = str(exc).strip() or type(exc).__name__
            raise InputError(f"{name} is not valid CSV: {reason}") from None
        except OSError as exc:
            raise InputError(f"cannot read {name}: {exc.strerror or exc}") from None


#: Cells past the header a row may have, read again with room for them; a row wider than
#: that refuses the file.
MAX_SPILL = 1024


class _TooWide(Exception):
    """A row has more cells than the spill columns leave room for."""

    def __init__(self, line: int, cells: int, given: int) -> None:
        super().__init__(line, cells)
        self.line, self.cells, self.given = line, cells, given


def _csv_frames(
    source: Path | IO[bytes],
    columns: list[str],
    delimiter: str,
    encoding: str,
    chunk_rows: int,
    skip: int,
    spill: int,
    line_end: str | None,
) -> Iterator[pd.DataFrame]:
    """:func:`read_csv`'s one pass, counting the rows it gave (for a read again)."""
    import pandas as pd

    names = [*columns, *(f"\0spill{n}" for n in range(spill))]
    given = 0
    # The header row read as a row (and dropped) under our own names, so that the
    # header decides the columns: a trailing delimiter on every row (a common export
    # quirk) cannot turn the first column into an index, and a row is cut nowhere.
    with pd.read_csv(
        source,
        sep=delimiter,
        skiprows=skip,
        header=None,
        names=names,
        dtype=str,
        keep_default_na=False,
        na_filter=False,
        encoding=encoding,
        encoding_errors="replace",
        chunksize=chunk_rows,
        engine="c",
        skip_blank_lines=True,
        lineterminator=line_end,
    ) as reader:
        try:
            first = reader.get_chunk(chunk_rows + 1)  # the header, then a whole chunk
            if len(first) > 1:
                given += len(first) - 1
                yield first.iloc[1:]
            for frame in reader:
                given += len(frame)
                yield frame
        except StopIteration:
            return
        except ValueError as exc:
            wide = _TOO_WIDE.search(str(exc))
            if wide is None:
                raise
            raise _TooWide(int(wide.group(1)), int(wide.group(2)), given) from None


#: A byte that is not UTF-8 (as surrogateescape decodes it), and what only UTF-8 text
#: spells: a Latin-1 letter (two bytes: the é of a UTF-8 name) or a character of three or
#: four bytes. Other two-byte characters are no evidence: in a cp1252 file, É and a
#: closing quotation mark (C9 92) happen to be valid UTF-8 too.
_NOT_UTF8 = re.compile("[\udc80-\udcff]")
_UTF8_TEXT = re.compile("[\u00c0-\u00ff\u0800-\ud7ff\ue000-\U0010ffff]")
_TOO_WIDE = re.compile(r"Expected \d+ fields in line (\d+), saw (\d+)")


#: A line's end: LF, CRLF or a CR alone, as the CSV readers take them.
_LINE_END = re.compile("\r\n?|\n")
_LINE_END_BYTES = re.compile(b"\r\n?|\n")


def _lines(text: str | bytes | bytearray) -> int:
    """Line ends in ``text`` (a CRLF cut by the end of a block may count twice)."""
    if not isinstance(text, str):
        return len(_LINE_END_BYTES.findall(text))
    return len(_LINE_END.findall(text))


def _json_kind(value: object) -> str:
    if value is None:
        return "JSON null"
    kinds = {dict: "a JSON object", list: "a JSON array", str: "a JSON string", bool: "JSON bool"}
    return kinds.get(type(value), "a JSON number")


def _decodes(decoder: codecs.IncrementalDecoder, data: bytes, final: bool = False) -> bool:
    try:
        decoder.decode(data, final)
    except UnicodeDecodeError:
        return False
    return True


def _bom_encoding(head: bytes) -> str | None:
    """The encoding a byte-order mark at the start of the file names, if any."""
    return next((name for bom, name in _BOMS if head.startswith(bom)), None)


def _not_text(head: bytes) -> str | None:
    """What the file is when its first bytes say it is no text (an image, an archive...)."""
    for magic, what in _MAGIC:
        if head.startswith(magic):
            if what == "a zip archive" and (b"[Content_Types].xml" in head or b"xl/" in head):
                return "an Excel workbook (.xlsx): give it the .xlsx extension"
            return what
    return None


def _binary_share(text: str) -> float:
    """The share of a text's characters that no text file holds (controls, U+FFFD)."""
    if not text:
        return 0.0
    bad = sum(text.count(c) for c in _BINARY_CHARS)
    return bad / len(text)


_BINARY_CHARS = [chr(c) for c in range(32) if chr(c) not in "\t\n\r\f"] + ["\x7f", "\ufffd"]


def _misdecoded(names: list[str]) -> bool:
    """Whether header names look like text read in the wrong encoding."""
    for name in names:
        if unsafe_char(name):  # NULs of UTF-16 read as bytes, U+FFFD, a stray BOM...
            return True
        for wrong in ("cp1252", "latin-1"):  # UTF-8 read as cp1252: "Ã©", "ï»¿"
            try:
                if name.encode(wrong).decode("utf-8") != name:
                    return True
            except UnicodeError:
                pass
    return False


def _unique(names: list[str]) -> list[str]:
    """Header names made unique the way pandas does it (``note``, ``note.1``), skipping
    a number another column already has (``note``, ``note.1``, ``note``: ``note.2``)."""
    taken = set(names)
    counts: dict[str, int] = {}
    out: list[str] = []
    for index, name in enumerate(names):
        name = name or f"column{index + 1}"
        if name in counts:
            base = name
            while name in counts or name in taken:
                counts[base] += 1
                name = f"{base}.{counts[base]}"
        counts.setdefault(name, 0)
        out.append(name)
    return out


def _kind(path: Path, report: bool, stream: bool = False) -> str:
    """The format by the name's extension; a stream named otherwise (standard input,
    ``<(command)``, a FIFO) is CSV, as standard input is."""
    suffix = path.suffix.lower()
    kinds = {".csv": "csv", ".txt": "csv", ".tsv": "tsv", ".xlsx": "xlsx"}
    if report:
        kinds = {".csv": "csv", ".xlsx": "xlsx", ".jsonl": "jsonl"}
    if stream and suffix not in kinds:
        return "csv"
    if suffix not in kinds:
        hint = " (save it as .xlsx)" if suffix in (".xls", ".xlsm", ".ods") else ""
        raise InputError(
            f"unsupported input type {suffix or '(no extension)'!r}{hint}: use {', '.join(kinds)}"
        )
    return kinds[suffix]


def _sniff_delimiter(text: str) -> str:
    """The candidate that splits the header widest and the next lines the same way."""
    lines = [ln for ln in text.splitlines()[:50] if ln.strip()]
    best, best_score = ",", (0, 0)
    for delim in DELIMITERS:
        try:
            rows = list(csv.reader(lines, delimiter=delim))
        except csv.Error:  # a field over csv's limit: a wide header that this does not split
            continue
        if not rows:
            continue
        width = len(rows[0])
        consistent = sum(1 for r in rows if len(r) == width)
        score = (width, consistent) if width > 1 else (0, 0)
        if score > best_score:
            best, best_score = delim, score
    return best


def _pick_columns(
    columns: list[str], header: list[str], options: ReadOptions, where: str = "", hint: str = ""
) -> tuple[str, str]:
    """Find the source and linked columns, most exact match first; refuse a tie.

    ``columns`` are the unique names (``note``, ``note.1``), ``header`` the names as
    written (a column written twice is two candidates). Detection levels, best first:

    1. the exact name ``sourceTicketId`` / ``linkedTicketId``;
    2. the same name with case, spaces, ``_`` and ``-`` folded (``Source Ticket ID``,
       ``source_ticket_id``, ``SOURCETICKETID``);
    3. the alias ``source`` / ``linked``, folded the same way (``Source``, ``LINKED``).

    The best level with a match decides; two matches at that level are refused, listing
    them, so that the user picks one with ``--source-col`` / ``--linked-col``. A name
    given with those options is matched exactly first, then folded (level 2).
    """
    shown = ", ".join(repr(c) for c in columns) or "(none)"
    written = [h or c for h, c in zip(header, columns, strict=True)]

    def refuse_tie(matches: list[int], what: str, flag: str) -> None:
        if len(matches) > 1:
            names = " and ".join(f"{columns[i]!r} (column {i + 1})" for i in matches)
            raise InputError(f"more than one {what} column{where}: {names}; choose one with {flag}")

    def find(wanted: str | None, canonical: str, alias: str, flag: str) -> str:
        what = f"{alias} ticket ID"
        if wanted is not None:
            if wanted in columns:
                return wanted
            matches = [i for i, name in enumerate(written) if _norm(name) == _norm(wanted)]
            if not matches:
                raise InputError(
                    f"column {wanted!r} given by {flag} not found{where}; columns: {shown}{hint}"
                )
            refuse_tie(matches, f"{wanted!r}", flag)
            return columns[matches[0]]
        levels = (
            [i for i, name in enumerate(written) if name == _CANONICAL[canonical]],
            [i for i, name in enumerate(written) if _norm(name) == canonical],
            [i for i, name in enumerate(written) if _norm(name) == alias],
        )
        for matches in levels:
            if matches:
                refuse_tie(matches, what, flag)
                return columns[matches[0]]
        raise InputError(
            f"no {what} column found{where} (looked for sourceTicketId/linkedTicketId or "
            f"source/linked; use {flag}); columns: {shown}{hint}"
        )

    source = find(options.source_col, "sourceticketid", "source", "--source-col")
    linked = find(options.linked_col, "linkedticketid", "linked", "--linked-col")
    if source == linked:
        raise InputError(f"the source and linked columns are the same column {source!r}")
    return source, linked


@dataclass(slots=True)
class Plan:
    """The validated input: per-row codes and duplicates, with a few examples for dry runs."""

    table: Table
    rows: int
    codes: np.ndarray[Any, Any]
    first_of: np.ndarray[Any, Any]
    counts: dict[int, int]
    invalid_examples: list[tuple[int, str]] = field(default_factory=list)
    send_examples: list[Pair] = field(default_factory=list)
    #: UNIX seconds each ``ALREADY`` row was linked (None when no row is): 8 bytes a row.
    linked_at: np.ndarray[Any, Any] | None = None
    #: The longest text cell read (IDs and carried cells): its length, row and column,
    #: so that a report format with a cell limit (xlsx) can refuse it before sending.
    longest: tuple[int, int, str] = (0, 0, "")

    @property
    def key(self) -> str:
        """Ties a journal to this input's content and how it was read."""
        t = self.table
        parts = (
            t.digest,
            t.source_col,
            t.linked_col,
            t.options.sheet or "",
            t.delimiter,
            t.encoding,
        )
        return hashlib.sha256("\0".join(parts).encode()).hexdigest()

    @property
    def to_send(self) -> int:
        return self.counts.get(SEND, 0)


#: Looks up when pairs were linked (the state store): ``(sources, linkeds) -> [time|None]``.
LinkedTimes = Callable[[list[str], list[str]], list[str | None]]


def scan(table: Table, keep: Any = None, linked_times: LinkedTimes | None = None) -> Plan:
    """Validate every row and find exact repeats, holding ~20 bytes per row.

    ``keep``, when given, maps a chunk to a boolean mask of rows whose earlier result is
    kept as is (``retry``); those are neither sent nor checked. ``linked_times``, when
    given, says which valid pairs are linked already: the first row of such a pair is
    ``ALREADY`` (not sent) and its repeats are its duplicates.
    """
    import numpy as np

    found = _Scan()
    for chunk in table.chunks():
        if chunk.input_changed:
            raise InputError(f"{STILL_CHANGING}: {table.name}")
        codes = _row_codes(table, chunk, keep)
        found.add(chunk, codes, linked_times)
        found.measure(chunk, (table.source_col, table.linked_col))
    if table.snapshot is not None and table.snapshot.changed():
        raise InputError(f"{STILL_CHANGING}: {table.name}")
    all_codes = np.concatenate(found.codes) if found.codes else np.zeros(0, dtype=np.uint8)
    first_of = _mark_duplicates(all_codes, found.hashes)
    linked_at = None
    if found.linked:
        linked_at = np.zeros(len(all_codes), dtype=np.int64)
        for rows, stamps in found.linked:
            linked_at[rows] = stamps
        all_codes[(all_codes == SEND) & (linked_at > 0)] = ALREADY
    counts = {
        int(c): int(n) for c, n in zip(*np.unique(all_codes, return_counts=True), strict=True)
    }
    # Duplicates of an invalid example are impossible (only SEND rows are hashed), but an
    # example row may have turned out to be a duplicate: keep only real first sends.
    send_examples = [p for p in found.send_examples if all_codes[p.row - 1] == SEND]
    return Plan(
        table,
        len(all_codes),
        all_codes,
        first_of,
        counts,
        found.invalid_examples,
        send_examples,
        linked_at,
        found.longest,
    )


def _row_codes(table: Table, chunk: Chunk, keep: Any) -> np.ndarray[Any, Any]:
    """Each row's code: sendable, or why not (later checks win)."""
    import numpy as np

    src = np.asarray(chunk.source, dtype=object)
    dst = np.asarray(chunk.linked, dtype=object)
    blank_s = src == ""
    blank_d = dst == ""
    codes = np.full(len(src), SEND, dtype=np.uint8)
    codes[src == dst] = SELF_LINK
    codes[blank_s] = BLANK_SOURCE
    codes[blank_d] = BLANK_LINKED
    codes[blank_s & blank_d] = BLANK_BOTH
    # Later checks win: an Excel error or a cut number says more than "blank" or a
    # self-link (two failed VLOOKUPs are both #N/A), and the source speaks first.
    codes[unsafe_rows(chunk.linked)] = CONTROL_LINKED
    codes[unsafe_rows(chunk.source)] = CONTROL_SOURCE
    codes[excel_error_rows(chunk.linked)] = EXCEL_ERROR_LINKED
    codes[excel_error_rows(chunk.source)] = EXCEL_ERROR_SOURCE
    # The source speaks first: its column is applied last.
    for side, kinds in reversed(list(enumerate(table.cell_kinds(chunk.start, chunk.end)))):
        if kinds is not None:
            for kind in np.unique(kinds[kinds > 0]):
                codes[kinds == kind] = cell_code(int(kind), side)
    codes[long_rows(chunk.linked)] = TOO_LONG_LINKED  # the runaway cell says it all
    codes[long_rows(chunk.source)] = TOO_LONG_SOURCE
    if chunk.overfull is not None:  # the IDs read may not be the row's at all
        codes[chunk.overfull] = EXTRA_CELLS
    if keep is not None:
        codes[np.asarray(keep(chunk), dtype=bool)] = KEEP
    return codes


_Hashes = tuple["np.ndarray[Any, Any]", "np.ndarray[Any, Any]", "np.ndarray[Any, Any]"]


@dataclass(slots=True)
class _Scan:
    """What the pass over the chunks gathers: codes, pair hashes, examples, known links."""

    codes: list[np.ndarray[Any, Any]] = field(default_factory=list)
    hashes: list[_Hashes] = field(default_factory=list)
    linked: list[tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]] = field(default_factory=list)
    invalid_examples: list[tuple[int, str]] = field(default_factory=list)
    send_examples: list[Pair] = field(default_factory=list)
    longest: tuple[int, int, str] = (0, 0, "")

    def measure(self, chunk: Chunk, names: tuple[str, str]) -> None:
        """Keep the longest text cell (one length a cell: cheap beside reading it)."""
        columns = {names[0]: chunk.source, names[1]: chunk.linked, **chunk.columns}
        for name, cells in columns.items():
            if set(map(type, cells)) <= {str}:  # text only (CSV): in C
                top = max(map(len, cells), default=0)
            else:  # numbers, blanks, lists of an xlsx or jsonl report
                top = max((len(v) for v in cells if isinstance(v, str)), default=0)
            if top > self.longest[0]:
                at = next(i for i, v in enumerate(cells) if isinstance(v, str) and len(v) == top)
                self.longest = (top, chunk.start + at + 1, name)

    def add(
        self, chunk: Chunk, codes: np.ndarray[Any, Any], linked_times: LinkedTimes | None
    ) -> None:
        import numpy as np
        import pandas as pd

        valid = np.flatnonzero(codes == SEND)
        if len(valid):
            src = np.asarray(chunk.source, dtype=object)[valid]
            joined = src + "\0" + np.asarray(chunk.linked, dtype=object)[valid]
            h1 = pd.util.hash_array(joined, hash_key=_HASH_KEYS[0], categorize=False)
            h2 = pd.util.hash_array(joined, hash_key=_HASH_KEYS[1], categorize=False)
            self.hashes.append((h1, h2, valid + chunk.start))
            if linked_times is not None:
                known = _known_links(linked_times, chunk, valid)
                if known is not None:
                    self.linked.append(known)
        if len(self.invalid_examples) < 20:
            for i in np.flatnonzero((codes != SEND) & (codes != KEEP))[:20]:
                reason = invalid_text(int(codes[i]), chunk.source[i], chunk.linked[i])
                self.invalid_examples.append((chunk.start + int(i) + 1, reason))
            del self.invalid_examples[20:]
        for i in valid[: max(0, 5 - len(self.send_examples))]:
            pair = Pair(chunk.start + int(i) + 1, chunk.source[i], chunk.linked[i])
            self.send_examples.append(pair)
        self.codes.append(codes)


def _mark_duplicates(codes: np.ndarray[Any, Any], hashes: list[_Hashes]) -> np.ndarray[Any, Any]:
    """Later repeats of a pair become ``DUPLICATE``; returns each row's first (or -1)."""
    import numpy as np

    first_of = np.full(len(codes), -1, dtype=np.int64)
    if not hashes:
        return first_of
    h1 = np.concatenate([h[0] for h in hashes])
    h2 = np.concatenate([h[1] for h in hashes])
    idx = np.concatenate([h[2] for h in hashes])
    order = np.lexsort((idx, h2, h1))
    h1, h2, idx = h1[order], h2[order], idx[order]
    same = np.empty(len(idx), dtype=bool)
    same[0] = False
    same[1:] = (h1[1:] == h1[:-1]) & (h2[1:] == h2[:-1])
    group_start = np.maximum.accumulate(np.where(same, 0, np.arange(len(idx))))
    dups = idx[same]
    first_of[dups] = idx[group_start[same]]
    codes[dups] = DUPLICATE
    return first_of


def _known_links(
    linked_times: LinkedTimes, chunk: Chunk, valid: np.ndarray[Any, Any]
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]] | None:
    """Rows of ``chunk`` (absolute indexes) already linked, and when (UNIX seconds)."""
    import numpy as np
    import pandas as pd

    positions = valid.tolist()
    times = linked_times([chunk.source[i] for i in positions], [chunk.linked[i] for i in positions])
    hits = [n for n, t in enumerate(times) if t is not None]
    if not hits:
        return None
    found = [t for t in times if t is not None]
    stamps = pd.to_datetime(found, utc=True, format="ISO8601")
    seconds = np.asarray(stamps.as_unit("s").asi8, dtype=np.int64)
    return valid[hits] + chunk.start, np.maximum(seconds, 1)
