"""Writing the report in each format, atomically, with formula text neutralised.

Rows arrive in input order as lists of cells. The file is written to a temporary file
beside the destination and renamed into place only when complete, so a reader never
sees half a report. Its name is unpredictable and created with ``O_EXCL`` (see
:mod:`bulklink._fs`), so a link planted in the folder is never written through; the
rename replaces a link at the report's own path with the report (the target is left
alone). CSV cells holding text from the API (ticket fields, server errors)
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
import operator
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from bulklink._fs import create_temp, open_fixed
from bulklink.errors import UsageError
from bulklink.models import RESULT_COLUMNS, TICKET_COLUMNS, TICKET_FIELDS, Outcome, ReportRow

if TYPE_CHECKING:
    from bulklink.tables.report.xlsx import RunInfo

FORMATS = (".csv", ".xlsx", ".jsonl")
_RISKY = re.compile(r"'*[=+\-@\t\r]")
_KNOWN = frozenset(TICKET_FIELDS)
_DOCUMENTED = operator.itemgetter(*TICKET_FIELDS)
_RISKY_FIRST = frozenset("=+-@\t\r'")
assert max(_RISKY_FIRST) < "A"  # CsvWriter.write relies on it
_CONTAINERS = (dict, list)  # a tuple: ``dict | list`` would build a Union at every call
_SUCCESS_AT = ReportRow._fields.index("success")
_ERROR_AT = ReportRow._fields.index("error")


def _api_cell(value: Any) -> str:
    """A cell of text from the API: formatted, then neutralised."""
    if value is True:  # a flag is in nearly every ticket: no formula to look for
        return "true"
    if value is False:
        return "false"
    if isinstance(value, _CONTAINERS):  # JSON text, which starts with [ or {
        return text_cell(value)
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
    if isinstance(value, _CONTAINERS):
        if not value:
            return "[]" if isinstance(value, list) else "{}"
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return str(value)


def split_ticket(ticket: dict[str, Any] | None) -> tuple[list[Any], dict[str, Any] | None]:
    """Documented fields in order, and the undocumented ones (or None)."""
    if ticket is None:
        return [None] * len(TICKET_FIELDS), None
    if len(ticket) == len(TICKET_FIELDS):
        try:  # the usual answer: exactly the documented fields, taken in one C call
            return list(_DOCUMENTED(ticket)), None
        except KeyError:
            pass
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
        # Created now, so a full disk or an unwritable folder shows before anything is sent;
        # a killed run's leftover is swept by the next run to take the report's lock.
        self._tmp_fd, self.tmp = create_temp(path, "tmp")

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
        head: ReportRow,
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
        if self._tmp_fd >= 0:
            os.close(self._take_tmp_fd())

    def _take_tmp_fd(self) -> int:
        """The temporary file's fd, handed over once to whoever writes it."""
        fd, self._tmp_fd = self._tmp_fd, -1
        return fd

    def _install(self, tmp: Path) -> None:
        fd = _open_tmp(tmp)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp.replace(self.path)  # replaces a link at the report's path, never follows it


def _open_tmp(tmp: Path) -> int:
    """Our temporary report, read back by fd, never through a link swapped in for it."""
    fd = open_fixed(tmp, os.O_RDONLY, "the temporary report")
    if fd is None:
        raise UsageError(f"the temporary report {tmp} disappeared before it was complete")
    return fd


class CsvWriter(ReportWriter):
    def __init__(self, path: Path, extra_fields: Sequence[str], other_cols: Sequence[str]) -> None:
        super().__init__(path, extra_fields, other_cols)
        self._fh = os.fdopen(self._take_tmp_fd(), "w", encoding="utf-8", newline="")
        self._csv = csv.writer(self._fh)
        self._csv.writerow(self.columns())
        self._n_known = len(self.extra_fields)

    def write(
        self,
        head: ReportRow,
        ticket: Sequence[Any],
        extras: dict[str, Any] | None,
        others: Sequence[Any],
    ) -> None:
        # The hot path of a fast run: plain text, ints and None go to the csv module as
        # they are (it writes None as empty); only the rest takes the slow road.
        cells: list[Any] = list(head)  # the outcome is a str: written as its text
        cells[_SUCCESS_AT] = "true" if head.success else "false"
        if head.error:
            cells[_ERROR_AT] = neutralize(head.error)
        # Every character that makes a formula sorts below "A": text from "A" up (names,
        # IDs, e-mails) passes on one comparison (5k instructions a row fewer, callgrind).
        cells += [
            v
            if (v.__class__ is str and (v >= "A" or not v or v[0] not in _RISKY_FIRST))
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
        if others:
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
        dst_fd, merged = create_temp(self.path, "merge")
        try:
            with (
                os.fdopen(_open_tmp(self.tmp), encoding="utf-8", newline="") as src,
                os.fdopen(dst_fd, "w", encoding="utf-8", newline="") as dst,
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
        except BaseException:
            merged.unlink(missing_ok=True)
            raise


class JsonlWriter(ReportWriter):
    """One JSON object per row; values keep their JSON types; extras are plain keys."""

    def __init__(self, path: Path, extra_fields: Sequence[str], other_cols: Sequence[str]) -> None:
        super().__init__(path, extra_fields, other_cols)
        self._fh = os.fdopen(self._take_tmp_fd(), "w", encoding="utf-8")

    def write(
        self,
        head: ReportRow,
        ticket: Sequence[Any],
        extras: dict[str, Any] | None,
        others: Sequence[Any],
    ) -> None:
        obj: dict[str, Any] = dict(zip(RESULT_COLUMNS, head, strict=True))
        obj["linked_at"] = head.linked_at or None
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
        head: ReportRow,
        ticket: Sequence[Any],
        extras: dict[str, Any] | None,
        others: Sequence[Any],
    ) -> None:
        assert self._spool is not None
        self._note_extras(extras)
        self._spool.write(json.dumps([list(head), list(ticket), extras, list(others)]) + "\n")
        self.rows += 1

    def commit(self, run: RunInfo | None = None) -> None:
        from bulklink.tables.report.xlsx import write_workbook

        spool = self._spool
        assert spool is not None
        names = [*self.extra_fields, *self._new_extras]

        def rows() -> Iterator[list[Any]]:
            spool.seek(0)
            for line in spool:
                head, ticket, extras, others = json.loads(line)
                known = extras or {}
                yield [*head, *ticket, *(known.get(k) for k in names), *others]

        with os.fdopen(self._take_tmp_fd(), "wb") as fh:
            write_workbook(fh, self.columns(list(self._new_extras)), rows, run)
        self.close()
        self._install(self.tmp)


class RowReader:
    """The reading side of the formats: a report's cells back as the typed row written.

    A CSV holds everything as text, with formula escapes on the API's text; xlsx and
    jsonl hold numbers, booleans and text as they came, so a leading quote there is data.
    ``retry`` writes kept rows from this, and ``report`` counts with it.
    """

    def __init__(self, columns: dict[str, list[Any]], escaped: bool) -> None:
        self.cols = columns
        self.escaped = escaped

    def outcome(self, at: int) -> str:
        return str(self.cols["outcome"][at]).strip()

    def success(self, at: int) -> bool:
        return str(self.cols["success"][at]).strip().lower() == "true"

    def error(self, at: int) -> str:
        """The error cell as written (``""`` stays ``""``)."""
        value = self.cols["error"][at] if "error" in self.cols else None
        if value is None:
            return ""
        return unneutralize(str(value)) if self.escaped else str(value)

    def row_number(self, at: int) -> int | str:
        value = self.cols["row"][at]
        return int(value) if str(value).isdigit() else value

    def head(self, at: int, source: str, linked: str) -> ReportRow:
        return ReportRow(
            self.row_number(at),
            source,
            linked,
            self.success(at),
            Outcome(self.outcome(at)),
            _number(self.cols["http_status"][at]),
            self.error(at),
            _number(self.cols["attempts"][at]),
            self.text("linked_at", at),
        )

    def text(self, name: str, at: int) -> str:
        """A text cell of ours, or "" when the report predates its column."""
        column = self.cols.get(name)
        value = column[at] if column is not None else None
        return "" if value is None else str(value)

    def cell(self, name: str, at: int) -> Any:
        """An API cell: empty is nothing; a CSV's formula escape undone."""
        value = self.cols[name][at]
        if isinstance(value, str):
            if not value:
                return None
            return unneutralize(value) if self.escaped else value
        return value


def _number(value: Any) -> Any:
    """A number cell read back (``3``, ``"3"``, ``3.0``); empty is None; else as it was."""
    text = str(value).strip() if value is not None else ""
    if text.endswith(".0"):
        text = text[:-2]
    return int(text) if text.isdigit() else (None if text in ("", "None", "nan") else value)


def open_writer(path: Path, extra_fields: Sequence[str], other_cols: Sequence[str]) -> ReportWriter:
    kind = {".csv": CsvWriter, ".jsonl": JsonlWriter, ".xlsx": XlsxWriter}[report_format(path)]
    return kind(path, extra_fields, other_cols)
