"""Writing the report, one writer per format behind one interface, installed atomically.

Each writer gets every row, in input order, as the full list of its cells from the
:class:`~bulklink.tables.report.schema.Schema` (and the row's late ticket fields), and
only decides how a cell is spelled in its format. The file is written to a temporary
file beside the destination and renamed into place only when complete, so a reader
never sees half a report. Its name is unpredictable and created with ``O_EXCL`` (see
:mod:`bulklink._fs`), so a link planted in the folder is never written through; the
rename replaces a link at the report's own path with the report (the target is left
alone). CSV cells holding text from the API (ticket fields, server errors) are
neutralised against formulas (:func:`~bulklink.tables.report.schema.neutralize`), so
``retry`` reads such a report back exactly. The xlsx report stores every string as a
string cell, never as a formula. Columns for ticket fields first seen in an answer are
only known once every row is in: the CSV gets them by one more pass, only when they
occur; the xlsx report is written whole at the end anyway.
"""

from __future__ import annotations

import csv
import json
import os
import pickle
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from bulklink._fs import AtomicFile
from bulklink.errors import UsageError
from bulklink.tables.inputs import CHUNK_ROWS, read_csv
from bulklink.tables.report.schema import (
    ERROR_AT,
    LINKED_AT_AT,
    OUTCOME_AT,
    SUCCESS_AT,
    TICKET_AT,
    Layout,
    RunInfo,
    Schema,
    neutralize,
    text_cell,
)
from bulklink.tables.report.xlsx import write_workbook

FORMATS = (".csv", ".xlsx", ".jsonl")

#: A row's late ticket fields (not in the header when writing began), or None.
Late = dict[str, Any] | None


def report_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise UsageError(
            f"unsupported report type {suffix or '(none)'!r}: use .csv, .xlsx or .jsonl"
        )
    return suffix


class ReportWriter(ABC):
    """Streams rows to a temporary file; :meth:`commit` renames it into place."""

    def __init__(self, path: Path, schema: Schema) -> None:
        self.path = path
        self.schema = schema
        self.rows = 0
        self._spool: IO[str] | None = None
        # Created now, so a full disk or an unwritable folder shows before anything is sent;
        # a killed run's leftover is swept by the next run to take the report's lock.
        self._file = AtomicFile(path)

    @property
    def tmp(self) -> Path:
        return self._file.tmp

    @abstractmethod
    def write(self, cells: Sequence[Any], late: Late) -> None:
        """One row: its cells as :meth:`Schema.cells` gives them."""

    @abstractmethod
    def commit(self, run: RunInfo | None = None) -> None:
        """Install the finished report; ``run`` is what the xlsx Summary sheet tells of the run."""

    def discard(self) -> None:
        self.close()
        self._file.discard()

    def close(self) -> None:
        if self._spool is not None:
            self._spool.close()
        self._file.close()

    def _text(self) -> IO[str]:
        """The temporary report as text; closing it leaves the fd to :meth:`close`."""
        return os.fdopen(self._file.fd, "w", encoding="utf-8", newline="", closefd=False)

    def _open_spool(self) -> IO[str]:
        if self._spool is None:
            self._spool = tempfile.TemporaryFile("w+", encoding="utf-8")  # noqa: SIM115 - closed by close()
        return self._spool

    def _install(self) -> None:
        self._file.install()
        self.close()


def _api_cells(values: Iterable[Any]) -> list[Any]:
    """Cells of the API's data in a CSV: text neutralised (tested first: this runs for
    every ticket cell of every row, and nearly all are text), the rest by type."""
    return [neutralize(v) if isinstance(v, str) else _non_text_cell(v) for v in values]


#: A tuple made once: a union (``bool | dict | list``) is a new object at every call.
_FLAG_OR_JSON = (bool, dict, list)


def _non_text_cell(value: Any) -> Any:
    """A flag or JSON (which starts with ``[`` or ``{``) cannot be a formula; the csv
    module writes None as empty and an int as its digits; anything else is text."""
    if value is None:
        return None
    if isinstance(value, _FLAG_OR_JSON):
        return text_cell(value)
    if isinstance(value, int):
        return value
    return neutralize(text_cell(value))


class CsvWriter(ReportWriter):
    """Text cells: ``true``/``false`` for success, the API's text neutralised."""

    def __init__(self, path: Path, schema: Schema) -> None:
        super().__init__(path, schema)
        self._fh = self._text()
        self._csv = csv.writer(self._fh)
        self._header = schema.columns()
        self._csv.writerow(self._header)

    def write(self, cells: Sequence[Any], late: Late) -> None:
        row = list(cells)
        row[SUCCESS_AT] = "true" if row[SUCCESS_AT] else "false"
        row[ERROR_AT] = neutralize(row[ERROR_AT])  # a server's error text is the API's
        cut = self.schema.cut
        row[TICKET_AT:cut] = _api_cells(row[TICKET_AT:cut])
        row[cut:] = [text_cell(v) for v in row[cut:]]  # the input's own: as it was
        if late is not None:
            self._open_spool().write(f"{self.rows}\t{json.dumps(late)}\n")
        self._csv.writerow(row)
        self.rows += 1

    def commit(self, run: RunInfo | None = None) -> None:
        self._fh.close()
        if self._spool is None:
            self._install()
            return
        self._add_late_columns(self._spool)
        self.discard()

    def close(self) -> None:
        self._fh.close()
        super().close()

    def _add_late_columns(self, spool: IO[str]) -> None:
        """Rewrite the file once with the late fields' columns, reading it back with the
        one CSV reader (no field-size limit), the late values from the spool."""
        spool.seek(0)
        spilled = (line.split("\t", 1) for line in spool)
        pending = next(spilled, None)
        merged = AtomicFile(self.path, kind="merge")
        os.lseek(self._file.fd, 0, os.SEEK_SET)
        try:
            with (
                os.fdopen(self._file.fd, "rb", closefd=False) as src,
                os.fdopen(merged.fd, "w", encoding="utf-8", newline="", closefd=False) as dst,
            ):
                writer = csv.writer(dst)
                writer.writerow(self.schema.columns())
                index = 0
                for frame in read_csv(src, self._header, ",", "utf-8", CHUNK_ROWS, self.tmp):
                    for cells in frame.itertuples(index=False, name=None):
                        late = None
                        if pending is not None and int(pending[0]) == index:
                            fields = json.loads(pending[1])
                            late = dict(zip(fields, _api_cells(fields.values()), strict=True))
                            pending = next(spilled, None)
                        writer.writerow(self.schema.complete(cells, late))
                        index += 1
            merged.install()
        except BaseException:
            merged.discard()
            raise
        merged.close()


class JsonlWriter(ReportWriter):
    """One JSON object per row; values keep their JSON types; late fields are plain keys."""

    def __init__(self, path: Path, schema: Schema) -> None:
        super().__init__(path, schema)
        self._fh = self._text()

    def write(self, cells: Sequence[Any], late: Late) -> None:
        row = list(cells)
        row[LINKED_AT_AT] = row[LINKED_AT_AT] or None  # never linked: null, not ""
        record = self.schema.record(row, late)
        self._fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.rows += 1

    def commit(self, run: RunInfo | None = None) -> None:
        self._fh.close()
        self._install()

    def close(self) -> None:
        self._fh.close()
        super().close()


class XlsxWriter(ReportWriter):
    """Rows are spooled, then written to a workbook once the columns are known.

    The spool is this process's own unnamed temporary file, read back once: pickle keeps
    each cell's type as JSON would, at a third of its cost a row.
    """

    def __init__(self, path: Path, schema: Schema) -> None:
        super().__init__(path, schema)
        self._rows: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()

    def write(self, cells: Sequence[Any], late: Late) -> None:
        row = list(cells)
        row[OUTCOME_AT] = str(row[OUTCOME_AT])  # plain text: pickle rebuilds an enum slowly
        pickle.dump((row, late), self._rows, protocol=pickle.HIGHEST_PROTOCOL)
        self.rows += 1

    def commit(self, run: RunInfo | None = None) -> None:
        spool = self._rows

        def rows() -> Iterator[list[Any]]:
            spool.seek(0)
            for _ in range(self.rows):
                cells, late = pickle.load(spool)  # noqa: S301 - our own file, written above
                yield self.schema.complete(cells, late)

        with os.fdopen(self._file.fd, "wb", closefd=False) as fh:
            write_workbook(fh, self.schema.columns(), rows, run)
        self._install()

    def close(self) -> None:
        self._rows.close()
        super().close()


def open_writer(path: Path, layout: Layout) -> ReportWriter:
    """The writer for the report's format (its suffix), with the report's schema."""
    kinds: dict[str, type[CsvWriter | JsonlWriter | XlsxWriter]] = {
        ".csv": CsvWriter,
        ".jsonl": JsonlWriter,
        ".xlsx": XlsxWriter,
    }
    return kinds[report_format(path)](path, Schema(layout))
