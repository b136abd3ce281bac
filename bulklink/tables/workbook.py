"""Reading one sheet of an .xlsx workbook as text, from each cell's own type.

pandas' Excel reader turns an error cell (``#N/A``) into NaN and a numeric cell of 20
digits into an int holding digits Excel never stored. Reading the cells with openpyxl
keeps an error as its text (``#N/A``, which validation refuses) and flags an ID cell
whose number cannot be an exact ID: more than 15 significant digits, or an integer of 16
digits or more (Excel keeps 15 significant digits of what is typed and zeroes the rest).
"""

from __future__ import annotations

import io
import math
import warnings
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bulklink.errors import InputError

MAX_EXACT = 10**15  # Excel holds 15 significant digits: an integer from here on may be cut


@dataclass(slots=True)
class Sheet:
    """A sheet read whole: the header, the values by column, the ID cells that lost digits."""

    name: str
    header: list[str]
    columns: list[list[Any]]
    lost_digits: dict[int, list[bool]] = field(default_factory=dict)


def _plain(value: Any) -> Any:
    """A cell as pandas gives it: a blank is "", a whole float an int."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _text(value: Any) -> str:
    """A cell as text, the way ``read_excel(dtype=str)`` shows it."""
    value = _plain(value)
    return value if isinstance(value, str) else str(value)


def id_text(value: Any) -> tuple[str, bool]:
    """An ID cell as text, and whether it is a number Excel cannot have held exactly."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return _text(value), False
    if isinstance(value, int):
        return str(value), abs(value) >= MAX_EXACT
    if not math.isfinite(value):
        return str(value), False
    shown = repr(value).removesuffix(".0")
    if value.is_integer():
        return (shown, True) if abs(value) >= MAX_EXACT else (str(int(value)), False)
    mantissa = shown.split("e")[0].replace("-", "").replace(".", "").lstrip("0")
    return shown, len(mantissa) > 15


def read_sheet(
    data: bytes,
    path: Path,
    wanted: str | None,
    pick: Callable[[list[str], str, str], Sequence[int]],
    *,
    report: bool = False,
) -> Sheet:
    """Read the sheet ``wanted`` (default: the first visible one) of an .xlsx file.

    ``pick`` gets the header and, for its error messages, a phrase naming the sheet and
    one listing the other sheets; it returns the positions of the ID columns.
    """
    import openpyxl

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # openpyxl's notes on styles and extensions
            book = openpyxl.load_workbook(
                io.BytesIO(data), read_only=True, data_only=True, keep_links=False
            )
    except Exception as exc:
        reason = str(exc).strip() or type(exc).__name__
        if isinstance(exc, zipfile.BadZipFile | KeyError):
            reason = f"not a zip archive holding a workbook: {reason}"
        raise InputError(f"{path} is not a readable .xlsx file ({reason})") from None
    try:
        return _read(book, path, wanted, pick, report)
    except InputError:
        raise
    except Exception as exc:
        reason = str(exc).strip() or type(exc).__name__
        raise InputError(f"{path} is not a readable .xlsx file ({reason})") from None
    finally:
        book.close()


def _read(
    book: Any,
    path: Path,
    wanted: str | None,
    pick: Callable[[list[str], str, str], Sequence[int]],
    report: bool,
) -> Sheet:
    if wanted is None and report and "report" in book.sheetnames:
        wanted = "report"  # the rows sheet, even if someone moved Summary first
    name, hint = _choose(book, path, wanted)
    sheet = book[name]
    sheet.reset_dimensions()  # a wrong <dimension> in the file must not cut rows off
    rows = (row for row in sheet.iter_rows(values_only=True) if not _blank(row))
    first = next(rows, None)
    if first is None:
        raise InputError(f"sheet {name!r} of {path} is empty (no header row){hint}")
    header = [_text(v).strip() for v in first]
    ids = set(pick(header, f" in sheet {name!r}", hint))
    columns, lost = _collect(rows, header, ids, report)
    return Sheet(name, header, columns, {i: flags for i, flags in lost.items() if any(flags)})


def _choose(book: Any, path: Path, wanted: str | None) -> tuple[str, str]:
    """The sheet to read, and a phrase listing the others (hidden ones said so)."""
    states = {name: book[name].sheet_state for name in book.sheetnames}

    def listed(names: Iterable[str]) -> str:
        return ", ".join(f"{n!r}" + ("" if states[n] == "visible" else " (hidden)") for n in names)

    if wanted is not None and wanted not in states:
        raise InputError(f"{path} has no sheet {wanted!r}; its sheets: {listed(states)}")
    # Excel never shows a hidden sheet, so the first sheet a user sees is the first visible.
    visible = [n for n, s in states.items() if s == "visible"]
    name = wanted if wanted is not None else (visible or list(states))[0]
    others = [n for n in states if n != name]
    return name, f"; other sheets: {listed(others)} (pick one with --sheet)" if others else ""


def _blank(row: Sequence[Any]) -> bool:
    """A row with no value at all; skipped, as blank lines are in a CSV."""
    return all(v is None or v == "" for v in row)


def _collect(
    rows: Iterable[Sequence[Any]], header: list[str], ids: set[int], report: bool
) -> tuple[list[list[Any]], dict[int, list[bool]]]:
    """The values by column, and per ID column which cells are numbers Excel cut short."""
    columns: list[list[Any]] = [[] for _ in header]
    lost: dict[int, list[bool]] = {i: [] for i in ids}
    for count, row in enumerate(rows):
        for _ in range(len(row) - len(columns)):  # cells beyond the header: more columns
            columns.append([""] * count)
            header.append("")
        for index, column in enumerate(columns):
            value = row[index] if index < len(row) else None
            if index not in ids:
                column.append(_plain(value) if report else _text(value))
            else:  # an ID, in a report too: as ``run`` reads it, flagged when cut short
                text, cut = id_text(value)
                column.append(text)
                lost[index].append(cut)
    return columns, lost
