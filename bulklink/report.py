"""Writing the report in each format, atomically, with formula text neutralised.

Rows arrive in input order as lists of cells. The file is written to a temporary name
beside the destination and renamed into place only when complete, so a reader never
sees half a report. CSV cells holding text from the API (ticket fields, server errors)
that start with ``= + - @`` (or a tab or carriage return) get a leading ``'``, as OWASP
advises against CSV injection; the escape is reversible (:func:`unneutralize`), so
``retry`` reads such a report back exactly. The xlsx report stores every string as a
string cell, never as a formula. Ticket fields the API adds beyond the documented ones
become extra ``ticket.*`` columns after the documented ones; since they are only known
as answers arrive, they are spooled aside and merged in by one more pass, only when
they occur.
"""

from __future__ import annotations

import csv
import json
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from bulklink.errors import UsageError
from bulklink.models import RESULT_COLUMNS, TICKET_COLUMNS, TICKET_FIELDS

if TYPE_CHECKING:
    from bulklink.xlsx import RunInfo

FORMATS = (".csv", ".xlsx", ".jsonl")
_RISKY = re.compile(r"'*[=+\-@\t\r]")
_KNOWN = frozenset(TICKET_FIELDS)
#: Columns whose text comes from the API: neutralised in CSV, restored when read back.
API_TEXT_COLUMNS = frozenset({"error", *TICKET_COLUMNS})


_RISKY_FIRST = frozenset("=+-@\t\r'")


def _api_cell(value: Any) -> str:
    """A cell of text from the API: formatted, then neutralised."""
    return neutralize(text_cell(value))


def neutralize(text: str) -> str:
    """Prefix a quote to text a spreadsheet would run as a formula; bijective by design."""
    if text and text[0] in _RISKY_FIRST and _RISKY.match(text):
        return "'" + text
    return text


def unneutralize(text: str) -> str:
    return text[1:] if text[:1] == "'" and _RISKY.match(text) else text


def report_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise UsageError(
            f"unsupported report type {suffix or '(none)'!r}: use .csv, .xlsx or .jsonl"
        )
    return suffix


def text_cell(value: Any) -> str:
    """A JSON value as the text a CSV cell holds: lists and objects as JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, dict | list):
        if not value:
            return "[]" if isinstance(value, list) else "{}"
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return str(value)


def split_ticket(ticket: dict[str, Any] | None) -> tuple[list[Any], dict[str, Any] | None]:
    """Documented fields in order, and the undocumented ones (or None)."""
    if ticket is None:
        return [None] * len(TICKET_FIELDS), None
    if len(ticket) == len(TICKET_FIELDS) and tuple(ticket) == TICKET_FIELDS:
        return list(ticket.values()), None  # the usual answer: exactly the documented fields
    get = ticket.get
    cells = [get(name) for name in TICKET_FIELDS]
    extras = None
    if len(ticket) > len(TICKET_FIELDS) or not _KNOWN.issuperset(ticket):
        extras = {k: v for k, v in ticket.items() if k not in _KNOWN} or None
    return cells, extras


class ReportWriter:
    """Streams rows to a temporary file; :meth:`commit` renames it into place."""

    def __init__(self, path: Path, extra_fields: Sequence[str], other_cols: Sequence[str]) -> None:
        self.path = path
        self.extra_fields = list(extra_fields)  # undocumented ticket fields known up front
        self.other_cols = list(other_cols)
        self.rows = 0
        self._new_extras: dict[str, None] = {}
        self._spool: IO[str] | None = None
        # A fixed name: the report's lock is held, and a crashed run's leftover is reused.
        self.tmp = path.with_name(f".{path.name}.bulklink-tmp")

    def columns(self, extras: Sequence[str] = ()) -> list[str]:
        ticket_extra = [f"ticket.{name}" for name in (*self.extra_fields, *extras)]
        return [*RESULT_COLUMNS, *TICKET_COLUMNS, *ticket_extra, *self.other_cols]

    def _note_extras(self, extras: dict[str, Any] | None) -> bool:
        """Record fields beyond the header's; True when this row has some."""
        if not extras:
            return False
        fresh = [k for k in extras if k not in self._new_extras and k not in self.extra_fields]
        for key in fresh:
            self._new_extras[key] = None
        return any(k not in self.extra_fields for k in extras)

    def write(
        self,
        head: Sequence[Any],
        ticket: Sequence[Any],
        extras: dict[str, Any] | None,
        others: Sequence[Any],
    ) -> None:
        raise NotImplementedError

    def commit(self, run: RunInfo | None = None) -> None:
        """Install the finished report; ``run`` is what the xlsx Summary sheet tells of the run."""
        raise NotImplementedError

    def discard(self) -> None:
        self.close()
        self.tmp.unlink(missing_ok=True)

    def close(self) -> None:
        if self._spool is not None:
            self._spool.close()

    def _install(self, tmp: Path) -> None:
        with tmp.open("rb") as fh:
            os.fsync(fh.fileno())
        tmp.replace(self.path)


class CsvWriter(ReportWriter):
    def __init__(self, path: Path, extra_fields: Sequence[str], other_cols: Sequence[str]) -> None:
        super().__init__(path, extra_fields, other_cols)
        self._fh = self.tmp.open("w", encoding="utf-8", newline="")
        self._csv = csv.writer(self._fh)
        self._csv.writerow(self.columns())
        self._n_known = len(self.extra_fields)

    def write(
        self,
        head: Sequence[Any],
        ticket: Sequence[Any],
        extras: dict[str, Any] | None,
        others: Sequence[Any],
    ) -> None:
        # The hot path of a fast run: plain text, ints and None go to the csv module as
        # they are (it writes None as empty); only the rest takes the slow road.
        cells: list[Any] = [
            v if v.__class__ is str or v.__class__ is int or v is None else text_cell(v)
            for v in head
        ]
        cells[6] = neutralize(cells[6] or "")
        cells += [
            v
            if (v.__class__ is str and (not v or v[0] not in _RISKY_FIRST))
            or v is None
            or v.__class__ is int
            else _api_cell(v)
            for v in ticket
        ]
        if self._n_known:
            known = extras or {}
            cells += [_api_cell(known.get(k)) for k in self.extra_fields]
        if extras is not None and self._note_extras(extras):
            self._spill(extras)
        cells += [v if v.__class__ is str else text_cell(v) for v in others]
        self._csv.writerow(cells)
        self.rows += 1

    def _spill(self, extras: dict[str, Any] | None) -> None:
        if self._spool is None:
            self._spool = tempfile.TemporaryFile("w+", encoding="utf-8")  # noqa: SIM115 - closed by commit/discard
        self._spool.write(f"{self.rows}\t{json.dumps(extras)}\n")

    def commit(self, run: RunInfo | None = None) -> None:
        self._fh.close()
        if self._spool is not None:
            self._merge_extras()
        self.close()
        self._install(self.tmp)

    def close(self) -> None:
        self._fh.close()
        super().close()

    def _merge_extras(self) -> None:
        """Rewrite once with the undocumented fields as columns (only when any appeared)."""
        assert self._spool is not None
        names = list(self._new_extras)
        cut = len(RESULT_COLUMNS) + len(TICKET_COLUMNS) + len(self.extra_fields)
        self._spool.seek(0)
        spilled = (line.split("\t", 1) for line in self._spool)
        pending = next(spilled, None)
        merged = self.tmp.with_suffix(".merge")
        with (
            self.tmp.open(encoding="utf-8", newline="") as src,
            merged.open("w", encoding="utf-8", newline="") as dst,
        ):
            reader, writer = csv.reader(src), csv.writer(dst)
            next(reader)
            writer.writerow(self.columns(names))
            for index, row in enumerate(reader):
                values: dict[str, Any] = {}
                if pending is not None and int(pending[0]) == index:
                    values = json.loads(pending[1])
                    pending = next(spilled, None)
                add = [neutralize(text_cell(values.get(k))) for k in names]
                writer.writerow(row[:cut] + add + row[cut:])
        merged.replace(self.tmp)


class JsonlWriter(ReportWriter):
    """One JSON object per row; values keep their JSON types; extras are plain keys."""

    def __init__(self, path: Path, extra_fields: Sequence[str], other_cols: Sequence[str]) -> None:
        super().__init__(path, extra_fields, other_cols)
        self._fh = self.tmp.open("w", encoding="utf-8")
        self._keys = self.columns()
        self._head_n = len(RESULT_COLUMNS)

    def write(
        self,
        head: Sequence[Any],
        ticket: Sequence[Any],
        extras: dict[str, Any] | None,
        others: Sequence[Any],
    ) -> None:
        obj = dict(zip(RESULT_COLUMNS, head, strict=True))
        obj["success"] = head[3] == "true" if isinstance(head[3], str) else bool(head[3])
        obj.update(zip(TICKET_COLUMNS, ticket, strict=True))
        known = extras or {}
        for name in self.extra_fields:
            obj[f"ticket.{name}"] = known.get(name)
        if extras:
            for name, value in extras.items():
                obj.setdefault(f"ticket.{name}", value)
        obj.update(zip(self.other_cols, others, strict=True))
        self._fh.write(json.dumps(obj, ensure_ascii=False) + "\n")
        self.rows += 1

    def commit(self, run: RunInfo | None = None) -> None:
        self._fh.close()
        self._install(self.tmp)

    def close(self) -> None:
        self._fh.close()


class XlsxWriter(ReportWriter):
    """Rows are spooled as JSON lines, then written to a workbook once the columns are known."""

    def __init__(self, path: Path, extra_fields: Sequence[str], other_cols: Sequence[str]) -> None:
        super().__init__(path, extra_fields, other_cols)
        self._spool = tempfile.TemporaryFile("w+", encoding="utf-8")  # noqa: SIM115 - closed by commit/discard

    def write(
        self,
        head: Sequence[Any],
        ticket: Sequence[Any],
        extras: dict[str, Any] | None,
        others: Sequence[Any],
    ) -> None:
        assert self._spool is not None
        self._note_extras(extras)
        self._spool.write(json.dumps([list(head), list(ticket), extras, list(others)]) + "\n")
        self.rows += 1

    def commit(self, run: RunInfo | None = None) -> None:
        from bulklink.xlsx import write_workbook

        spool = self._spool
        assert spool is not None
        names = [*self.extra_fields, *self._new_extras]

        def rows() -> Iterator[list[Any]]:
            spool.seek(0)
            for line in spool:
                head, ticket, extras, others = json.loads(line)
                known = extras or {}
                yield [*head, *ticket, *(known.get(k) for k in names), *others]

        write_workbook(self.tmp, self.columns(list(self._new_extras)), rows, run)
        self.close()
        self._install(self.tmp)


def open_writer(path: Path, extra_fields: Sequence[str], other_cols: Sequence[str]) -> ReportWriter:
    kind = {".csv": CsvWriter, ".jsonl": JsonlWriter, ".xlsx": XlsxWriter}[report_format(path)]
    return kind(path, extra_fields, other_cols)
