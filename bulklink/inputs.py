"""Reading the input table into pairs: formats, encodings, delimiters, columns, validation.

Every cell is read as text, so an ID is sent exactly as written (``00123`` stays
``00123``). The file is scanned once up front (validation, duplicate detection, content
hash) keeping only a few bytes per row, and later re-read in chunks, so memory stays flat
however large the file is.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bulklink.errors import InputError
from bulklink.models import Pair

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

CHUNK_ROWS = 50_000
DELIMITERS = (",", ";", "\t", "|")
SEND, BLANK_SOURCE, BLANK_LINKED, BLANK_BOTH, SELF_LINK, DUPLICATE, KEEP = range(7)
INVALID_REASONS = {
    BLANK_SOURCE: "blank source ticket ID",
    BLANK_LINKED: "blank linked ticket ID",
    BLANK_BOTH: "blank source and linked ticket IDs",
    SELF_LINK: "source and linked ticket are the same",
}
_HASH_KEYS = ("bulklink-pair-k1", "bulklink-pair-k2")  # pandas wants 16-char keys
_ALIASES = {"source": "sourceticketid", "linked": "linkedticketid"}


def clean_id(value: object) -> str:
    """An ID from a Python caller as text: None and NaN (a pandas blank) are blank."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return str(value).strip()


def invalid_reason(source: str, linked: str) -> str | None:
    """Why a pair cannot be sent, or None: the rule :func:`scan` applies to whole files."""
    if not source or not linked:
        code = (
            BLANK_BOTH
            if not source and not linked
            else BLANK_SOURCE
            if not source
            else (BLANK_LINKED)
        )
        return INVALID_REASONS[code]
    return INVALID_REASONS[SELF_LINK] if source == linked else None


def _norm(name: str) -> str:
    """Fold case, spaces, underscores and dashes: ``Source Ticket ID`` == ``source_ticket_id``."""
    key = re.sub(r"[\s_\-]+", "", name.strip().lower())
    return _ALIASES.get(key, key)


@dataclass(frozen=True, slots=True)
class ReadOptions:
    """How to read the input; the defaults detect everything."""

    source_col: str | None = None
    linked_col: str | None = None
    sheet: str | None = None
    encoding: str | None = None
    delimiter: str | None = None


@dataclass(slots=True)
class Chunk:
    """A slice of the input: ``start`` is the 0-based index of its first data row."""

    start: int
    source: list[str]
    linked: list[str]
    columns: dict[str, list[str]]

    def __len__(self) -> int:
        return len(self.source)


class Table:
    """An input file opened for (repeated) chunked reading, with its columns resolved."""

    def __init__(
        self, path: Path, options: ReadOptions = ReadOptions(), *, report: bool = False
    ) -> None:
        self.path = path
        self.options = options
        self.kind = _kind(path, report)
        self.report = report
        self.digest = ""
        self._frame: pd.DataFrame | None = None
        self.encoding = options.encoding or "utf-8"
        self.delimiter = options.delimiter or ("\t" if self.kind == "tsv" else ",")
        self.columns = self._open()
        if report:
            missing = [c for c in (options.source_col, options.linked_col) if c not in self.columns]
            if missing:
                raise InputError(f"{path} is not a bulklink report: no column {missing[0]}")
        self.source_col, self.linked_col = _pick_columns(self.columns, options)
        self.other_cols = [c for c in self.columns if c not in (self.source_col, self.linked_col)]

    def _open(self) -> list[str]:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            raise InputError(f"input file not found: {self.path}") from None
        except OSError as exc:
            raise InputError(f"cannot read {self.path}: {exc.strerror}") from None
        if self.path.is_dir():
            raise InputError(f"input is a directory, not a file: {self.path}")
        if size == 0:
            raise InputError(f"input file is empty (0 bytes): {self.path}")
        if self.kind == "xlsx":
            return self._open_excel()
        if self.kind == "jsonl":
            return self._open_jsonl()
        return self._open_text()

    def _open_text(self) -> list[str]:
        digest = hashlib.sha256()
        decoder = codecs.getincrementaldecoder("utf-8")()
        utf8 = True
        head = b""
        try:
            with self.path.open("rb") as fh:
                while block := fh.read(1 << 20):
                    digest.update(block)
                    if len(head) < 65536:
                        head += block[: 65536 - len(head)]
                    if utf8 and self.options.encoding is None:
                        try:
                            decoder.decode(block)
                        except UnicodeDecodeError:
                            utf8 = False
            if utf8:
                try:
                    decoder.decode(b"", final=True)  # a sequence cut off at the very end
                except UnicodeDecodeError:
                    utf8 = False
        except OSError as exc:
            raise InputError(f"cannot read {self.path}: {exc.strerror}") from None
        self.digest = digest.hexdigest()
        if self.options.encoding is None:
            self.encoding = "utf-8-sig" if utf8 else "cp1252"
        try:
            text = head.decode(self.encoding, errors="replace")
        except LookupError:
            raise InputError(f"unknown encoding: {self.options.encoding}") from None
        if self.options.delimiter is None and self.kind == "csv":
            self.delimiter = _sniff_delimiter(text)
        if not text.strip():
            raise InputError(f"input file has no header row: {self.path}")
        header = next(csv.reader(io.StringIO(text), delimiter=self.delimiter), [])
        if self.encoding == "utf-8-sig" and header:
            header[0] = header[0].removeprefix("\ufeff")
        return _unique([h.strip() for h in header])

    def _open_excel(self) -> list[str]:
        import pandas as pd

        data = self.path.read_bytes()
        self.digest = hashlib.sha256(data + b"\0" + (self.options.sheet or "").encode()).hexdigest()
        try:
            with pd.ExcelFile(io.BytesIO(data), engine="openpyxl") as book:
                sheet: str | int = 0 if self.options.sheet is None else self.options.sheet
                if self.report and self.options.sheet is None and "report" in book.sheet_names:
                    sheet = "report"  # the rows sheet, even if someone moved Summary first
                frame = pd.read_excel(
                    book,
                    sheet_name=sheet,
                    # An input is all text; a report read back keeps its numbers and
                    # booleans so that ``retry`` writes the rows it keeps exactly as they were.
                    dtype=object if self.report else str,
                    keep_default_na=False,
                    na_filter=False,
                )
        except ValueError as exc:
            if "Worksheet" in str(exc) or "sheet" in str(exc).lower():
                raise InputError(f"{self.path}: {exc}") from None
            raise InputError(f"{self.path} is not a readable .xlsx file: {exc}") from None
        except (zipfile.BadZipFile, KeyError, OSError, TypeError) as exc:
            reason = str(exc) or type(exc).__name__
            raise InputError(f"{self.path} is not a readable .xlsx file ({reason})") from None
        frame.columns = _unique([str(c).strip() for c in frame.columns])
        if self.report:
            for name in (self.options.source_col, self.options.linked_col):
                if name in frame.columns:
                    frame[name] = frame[name].map(str)
        if len(frame.columns):
            # A fully blank row is skipped, as blank lines are in a CSV.
            frame = frame[(frame != "").any(axis=1)].reset_index(drop=True)
        self._frame = frame
        return list(frame.columns)

    def _open_jsonl(self) -> list[str]:
        """A JSON-lines report: values keep their JSON types; IDs are strings."""
        import pandas as pd

        data = self.path.read_bytes()
        self.digest = hashlib.sha256(data).hexdigest()
        records = []
        for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except ValueError:
                    raise InputError(f"{self.path}: line {number} is not JSON") from None
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
        return columns

    def _read_frames(self, chunk_rows: int) -> Iterator[pd.DataFrame]:
        if self._frame is not None:
            for start in range(0, len(self._frame), chunk_rows):
                yield self._frame.iloc[start : start + chunk_rows]
            return
        import pandas as pd

        try:
            # names + usecols: the header decides the columns. A trailing delimiter on
            # every row (a common export quirk) or a stray extra cell can then neither
            # turn the first column into an index nor shift the IDs.
            with pd.read_csv(
                self.path,
                sep=self.delimiter,
                header=0,
                names=self.columns,
                usecols=range(len(self.columns)),
                dtype=str,
                keep_default_na=False,
                na_filter=False,
                encoding=self.encoding,
                encoding_errors="replace",
                chunksize=chunk_rows,
                engine="c",
                skip_blank_lines=True,
            ) as reader:
                yield from reader
        except (pd.errors.ParserError, ValueError) as exc:
            raise InputError(f"{self.path} is not valid CSV: {str(exc).strip()}") from None

    def chunks(self, chunk_rows: int = CHUNK_ROWS) -> Iterator[Chunk]:
        """Yield the table in order, IDs trimmed; other columns exactly as read."""
        start = 0
        for frame in self._read_frames(chunk_rows):
            source = frame[self.source_col].str.strip().tolist()
            linked = frame[self.linked_col].str.strip().tolist()
            columns = {c: frame[c].tolist() for c in self.other_cols}
            yield Chunk(start, source, linked, columns)
            start += len(source)


def _unique(names: list[str]) -> list[str]:
    """Header names made unique the way pandas does it (``note``, ``note.1``)."""
    seen: dict[str, int] = {}
    out = []
    for index, name in enumerate(names):
        name = name or f"column{index + 1}"
        if name in seen:
            seen[name] += 1
            name = f"{name}.{seen[name]}"
        seen.setdefault(name, 0)
        out.append(name)
    return out


def _kind(path: Path, report: bool) -> str:
    suffix = path.suffix.lower()
    kinds = {".csv": "csv", ".txt": "csv", ".tsv": "tsv", ".xlsx": "xlsx"}
    if report:
        kinds = {".csv": "csv", ".xlsx": "xlsx", ".jsonl": "jsonl"}
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
        rows = list(csv.reader(lines, delimiter=delim))
        if not rows:
            continue
        width = len(rows[0])
        consistent = sum(1 for r in rows if len(r) == width)
        score = (width, consistent) if width > 1 else (0, 0)
        if score > best_score:
            best, best_score = delim, score
    return best


def _pick_columns(columns: list[str], options: ReadOptions) -> tuple[str, str]:
    def find(wanted: str | None, canonical: str, flag: str) -> str:
        if wanted is not None:
            if wanted in columns:
                return wanted
            matches = [c for c in columns if _norm(c) == _norm(wanted)]
            if matches:
                return matches[0]
            raise InputError(f"column {wanted!r} given by {flag} not found; columns: {shown}")
        matches = [c for c in columns if _norm(c) == canonical]
        if not matches:
            raise InputError(
                f"no {canonical.replace('ticketid', '')} ticket ID column found (looked for "
                f"sourceTicketId/linkedTicketId or source/linked; use {flag}); columns: {shown}"
            )
        return matches[0]

    shown = ", ".join(repr(c) for c in columns) or "(none)"
    source = find(options.source_col, "sourceticketid", "--source-col")
    linked = find(options.linked_col, "linkedticketid", "--linked-col")
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


def scan(table: Table, keep: Any = None) -> Plan:
    """Validate every row and find exact repeats, holding ~20 bytes per row.

    ``keep``, when given, maps a chunk to a boolean mask of rows whose earlier result is
    kept as is (``retry``); those are neither sent nor checked.
    """
    import numpy as np
    import pandas as pd

    code_parts: list[np.ndarray[Any, Any]] = []
    hashes: list[tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], np.ndarray[Any, Any]]] = []
    invalid_examples: list[tuple[int, str]] = []
    send_examples: list[Pair] = []
    for chunk in table.chunks():
        src = np.asarray(chunk.source, dtype=object)
        dst = np.asarray(chunk.linked, dtype=object)
        blank_s = src == ""
        blank_d = dst == ""
        codes = np.full(len(src), SEND, dtype=np.uint8)
        codes[src == dst] = SELF_LINK
        codes[blank_s] = BLANK_SOURCE
        codes[blank_d] = BLANK_LINKED
        codes[blank_s & blank_d] = BLANK_BOTH
        if keep is not None:
            codes[np.asarray(keep(chunk), dtype=bool)] = KEEP
        valid = np.flatnonzero(codes == SEND)
        if len(valid):
            joined = src[valid] + "\0" + dst[valid]
            h1 = pd.util.hash_array(joined, hash_key=_HASH_KEYS[0], categorize=False)
            h2 = pd.util.hash_array(joined, hash_key=_HASH_KEYS[1], categorize=False)
            hashes.append((h1, h2, valid + chunk.start))
        if len(invalid_examples) < 20:
            for i in np.flatnonzero((codes != SEND) & (codes != KEEP))[:20]:
                invalid_examples.append((chunk.start + int(i) + 1, INVALID_REASONS[codes[i]]))
            del invalid_examples[20:]
        for i in valid[: max(0, 5 - len(send_examples))]:
            send_examples.append(Pair(chunk.start + int(i) + 1, chunk.source[i], chunk.linked[i]))
        code_parts.append(codes)
    all_codes = np.concatenate(code_parts) if code_parts else np.zeros(0, dtype=np.uint8)
    first_of = np.full(len(all_codes), -1, dtype=np.int64)
    if hashes:
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
        all_codes[dups] = DUPLICATE
    counts = {
        int(c): int(n) for c, n in zip(*np.unique(all_codes, return_counts=True), strict=True)
    }
    # Duplicates of an invalid example are impossible (only SEND rows are hashed), but an
    # example row may have turned out to be a duplicate: keep only real first sends.
    send_examples = [p for p in send_examples if all_codes[p.row - 1] == SEND]
    return Plan(table, len(all_codes), all_codes, first_of, counts, invalid_examples, send_examples)
