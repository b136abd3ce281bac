"""Reading one sheet of an .xlsx workbook as text, from each cell's own type and format.

python-calamine (a Rust reader) gives every cell's value and type quickly, but not two
things the ID rules need: a cell's number format (``00000`` shows 123 as ``00123``) and
what an error or never-calculated formula cell holds (it gives both as empty). Those are
found in one light streaming pass over the sheet's XML (:func:`_scan_xml`): the styles
part is read, and only ID cells, error cells and formula cells are looked at, with a
regular expression, in the blocks that can hold one. An ID cell that is a number Excel
cannot have held exactly (more than 15 significant digits, or an integer of 16 digits or
more) and one that is a date, time, boolean or formula never calculated is flagged with
its kind (:mod:`bulklink.tables.ids`), so validation says what it is and how to fix it.
"""

from __future__ import annotations

import datetime as dt
import io
import math
import posixpath
import re
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from html import unescape
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

from bulklink.errors import InputError
from bulklink.tables.ids import BOOLEAN, DATE, DATETIME, FORMULA, LOST, TIME

MAX_EXACT = 10**15  # Excel holds 15 significant digits: an integer from here on may be cut
OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # an OLE compound file: .xls, or encrypted
LISTED_SHEETS = 5  # a missing sheet's error lists this many names, then a count
_BLOCK = 1 << 22  # bytes of sheet XML looked at at a time
_CARRY = 1 << 16  # bytes carried to the next block when one holds no end of a cell
#: A sheet's relationship id, in the transitional namespace and in Strict Open XML's.
_NS_RELS = (
    "{http://schemas.openxmlformats.org/officeDocument/2006/relationships}id",
    "{http://purl.oclc.org/ooxml/officeDocument/relationships}id",
)
#: Excel's built-in number formats that pad or decorate an integer; the rest show its digits.
_BUILTIN_FORMATS = {1: "0", 49: "@"}


@dataclass(slots=True)
class Sheet:
    """A sheet read whole: the header, the values by column, the ID cells of an odd kind."""

    name: str
    header: list[str]
    columns: list[list[Any]]
    kinds: dict[int, list[int]] = field(default_factory=dict)


def _plain(value: Any) -> Any:
    """A cell as pandas gives it: a blank is "", a whole float an int, a time its text."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dt.date | dt.time | dt.timedelta):
        return str(value)
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


def _kind(value: Any) -> int:
    """The kind of a cell no ID can be (0: text or a number)."""
    if isinstance(value, bool):
        return BOOLEAN
    if isinstance(value, dt.datetime):
        return DATETIME if value.time() != dt.time() else DATE
    if isinstance(value, dt.date):
        return DATE
    return TIME if isinstance(value, dt.time | dt.timedelta) else 0


def read_sheet(
    data: bytes,
    path: Path,
    wanted: str | None,
    pick: Callable[[list[str], str, str], Sequence[int]],
    *,
    report: bool = False,
) -> Sheet:
    """Read the sheet ``wanted`` (default: the first visible worksheet) of an .xlsx file.

    ``pick`` gets the header and, for its error messages, a phrase naming the sheet and
    one listing the other sheets; it returns the positions of the ID columns.
    """
    import python_calamine

    if data.startswith(OLE_MAGIC):
        raise InputError(_ole_reason(data, path))
    try:
        book = python_calamine.CalamineWorkbook.from_filelike(io.BytesIO(data))
        archive = zipfile.ZipFile(io.BytesIO(data))
    except Exception as exc:
        reason = str(exc).strip() or type(exc).__name__
        if isinstance(exc, zipfile.BadZipFile | python_calamine.ZipError):
            reason = f"not a zip archive holding a workbook: {reason}"
        raise InputError(f"{path} is not a readable .xlsx file ({reason})") from None
    try:
        with archive:
            return _read(book, archive, path, wanted, pick, report)
    except InputError:
        raise
    except Exception as exc:
        reason = str(exc).strip() or type(exc).__name__
        raise InputError(f"{path} is not a readable .xlsx file ({reason})") from None
    finally:
        book.close()


def _ole_reason(data: bytes, path: Path) -> str:
    """Why an OLE file is no .xlsx: Excel keeps a password-protected workbook in one."""
    if "EncryptedPackage".encode("utf-16-le") in data:
        return (
            f"{path} is password-protected: open it in Excel, remove the password "
            "(File > Info > Protect Workbook > Encrypt with Password) and save it again"
        )
    return f"{path} is an old Office file (.xls?), not an .xlsx: save it as .xlsx or CSV"


def _read(
    book: Any,
    archive: zipfile.ZipFile,
    path: Path,
    wanted: str | None,
    pick: Callable[[list[str], str, str], Sequence[int]],
    report: bool,
) -> Sheet:
    names = [m.name for m in book.sheets_metadata]
    if wanted is None and report and "report" in names:
        wanted = "report"  # the rows sheet, even if someone moved Summary first
    name, hint = _choose(book.sheets_metadata, path, wanted)
    _refuse_sprawl(archive, names.index(name), name, path)
    grid = _grid(book, archive, name, names.index(name))
    at = next((i for i, row in enumerate(grid) if not _blank(row)), None)
    if at is None:
        raise InputError(f"sheet {name!r} of {path} is empty (no header row){hint}")
    header = [_text(v).strip() for v in grid[at]]
    ids = sorted(set(pick(header, f" in sheet {name!r}", hint)))
    rows = grid[at + 1 :]
    del grid
    # By column, each a tuple (C speed); calamine's rows are all of one width.
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in header]
    numbers = any({int, float} & set(map(type, columns[i])) for i in ids if i < len(columns))
    found = _scan_xml(archive, names.index(name), ids, numbers)
    return _collect(name, rows, columns, at, header, ids, found, report)


#: Cells of the rectangle from A1 to a sheet's last value that calamine is let hold: it
#: holds every one (some 32 bytes each), and a value typed by mistake in Excel's last cell
#: (XFD1048576) asks for 17 billion, which ends the process (exit 134) rather than raise.
MAX_CELLS = 50_000_000
_DIMENSION = re.compile(rb'<(?:\w+:)?dimension\s+ref="(?:[A-Z]+[0-9]+:)?([A-Z]+)([0-9]+)"')
#: A cell with a value (not ``<c .../>``), its column letters and row.
_VALUE_CELL = re.compile(rb"""<(?:\w+:)?c\s+r=["']([A-Z]{1,3})([0-9]+)["'][^>]*?(?<!/)>""")


def _refuse_sprawl(archive: zipfile.ZipFile, index: int, name: str, path: Path) -> None:
    """Refuse a sheet whose values span more than :data:`MAX_CELLS` from A1, before
    calamine is asked to hold them. The sheet's own ``<dimension>`` answers for the
    usual file; without one, or with a large one (it counts formatted cells too), the
    cells with a value are looked at."""
    part, _ = _parts(archive, index)
    with archive.open(part) as fh:
        head = fh.read(1 << 16)
    found = _DIMENSION.search(head)
    if found is not None and (_column(found.group(1)) + 1) * int(found.group(2)) <= MAX_CELLS:
        return
    width = height = 0
    last = ""
    with archive.open(part) as fh:
        tail = b""
        while block := fh.read(_BLOCK):
            text = tail + block
            for cell in _VALUE_CELL.finditer(text):
                column, row = _column(cell.group(1)) + 1, int(cell.group(2))
                if column > width or row > height:
                    width, height = max(width, column), max(height, row)
                    last = (cell.group(1) + cell.group(2)).decode()
            tail = text[-64:]  # a cell's start cut by the block's end is matched next time
    if width * height > MAX_CELLS:
        raise InputError(
            f"sheet {name!r} of {path} spans A1:{last} ({width * height:,} cells, more than "
            f"{MAX_CELLS:,}) because of a value far from the table: delete what lies beyond "
            "it (Ctrl+End in Excel goes to the last cell) and save it, or save it as CSV"
        )


_ERROR_VALUE = re.compile(
    rb"""(<(?:\w+:)?c\b[^>]*?\bt=["']e["'][^>]*>(?:(?!</(?:\w+:)?c>).)*?<(?:\w+:)?v>)[^<]*"""
    rb"(</(?:\w+:)?v>)",
    re.DOTALL,
)


def _grid(book: Any, archive: zipfile.ZipFile, name: str, index: int) -> list[list[Any]]:
    """The sheet's cells by row from A1; calamine refuses error values newer than it knows
    (``#SPILL!``), so then it reads a copy with each error as ``#N/A`` (the XML pass
    finds the real ones)."""
    import python_calamine

    try:
        return list(book.get_sheet_by_name(name).to_python(skip_empty_area=False))
    except python_calamine.CalamineError as exc:
        if "error value" not in str(exc):
            raise
    part, _ = _parts(archive, index)
    copy = io.BytesIO()
    with zipfile.ZipFile(copy, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as out:
        for item in archive.infolist():
            data = archive.read(item)
            fixed = _ERROR_VALUE.sub(rb"\1#N/A\2", data) if item.filename == part else data
            out.writestr(item.filename, fixed)  # a new entry: ``item`` belongs to ``archive``
    copy.seek(0)
    with python_calamine.CalamineWorkbook.from_filelike(copy) as readable:
        grid: list[list[Any]] = readable.get_sheet_by_name(name).to_python(skip_empty_area=False)
    return grid


def _choose(sheets: Sequence[Any], path: Path, wanted: str | None) -> tuple[str, str]:
    """The sheet to read, and a phrase listing the others (hidden ones said so)."""
    import python_calamine

    def shown(sheet: Any) -> str:
        hidden = sheet.visible != python_calamine.SheetVisibleEnum.Visible
        chart = sheet.typ != python_calamine.SheetTypeEnum.WorkSheet
        return f"{sheet.name!r}" + (" (hidden)" if hidden else "") + (" (chart)" if chart else "")

    def listed(chosen: Sequence[Any]) -> str:
        text = ", ".join(shown(s) for s in chosen[:LISTED_SHEETS])
        more = len(chosen) - LISTED_SHEETS
        return text + (f" and {more} more ({len(chosen)} sheets)" if more > 0 else "")

    tables = [s for s in sheets if s.typ == python_calamine.SheetTypeEnum.WorkSheet]
    if wanted is None:
        # Excel never shows a hidden sheet, so the first sheet a user sees is the first
        # visible one; a chart sheet holds no rows. A hidden one (old pairs, put away on
        # purpose) is read only when named.
        visible = [s for s in tables if s.visible == python_calamine.SheetVisibleEnum.Visible]
        if not visible:
            what = "visible worksheet" if tables else "worksheet with rows"
            hint = " (pick one with --sheet)" if tables else ""
            raise InputError(f"{path} has no {what}; its sheets: {listed(sheets)}{hint}")
        sheet = visible[0]
    else:
        sheet = _by_name(sheets, wanted, path, listed)
        if sheet not in tables:
            raise InputError(f"sheet {wanted!r} of {path} is a chart, not a table of rows")
    others = [s for s in sheets if s is not sheet]
    return sheet.name, f"; other sheets: {listed(others)} (pick one with --sheet)" if others else ""


def _by_name(
    sheets: Sequence[Any], wanted: str, path: Path, listed: Callable[[Sequence[Any]], str]
) -> Any:
    """The sheet named ``wanted``: exactly, else the one sheet whose name differs in case."""
    exact = [s for s in sheets if s.name == wanted]
    folded = exact or [s for s in sheets if s.name.casefold() == wanted.casefold()]
    if len(folded) == 1:
        return folded[0]
    if folded:
        raise InputError(f"{path} has sheets {listed(folded)}: give --sheet with the exact case")
    raise InputError(f"{path} has no sheet {wanted!r}; its sheets: {listed(sheets)}")


def _blank(row: Sequence[Any]) -> bool:
    """A row with no value at all; skipped, as blank lines are in a CSV."""
    return all(v is None or v == "" for v in row)


@dataclass(slots=True)
class _Found:
    """What the XML holds that calamine does not give: by (row, column), 0-based."""

    errors: dict[tuple[int, int], str] = field(default_factory=dict)
    formulas: dict[tuple[int, int], str] = field(default_factory=dict)  # never calculated
    shown: dict[tuple[int, int], str] = field(default_factory=dict)  # a padded number
    #: The workbook asks to be recalculated when opened (XlsxWriter's, pandas'): its
    #: formulas' values were never calculated, whatever they hold (XlsxWriter writes 0).
    stale: bool = False


# Elements with or without a namespace prefix (``<x:c>``, as OpenXML SDK writers spell
# them), attributes in either quotes: each is as valid as Excel's own spelling.
_CELL = re.compile(rb"<(?:\w+:)?c\b([^>]*?)(?:/>|>(.*?)</(?:\w+:)?c>)", re.DOTALL)
_ATTR = re.compile(rb"""\b(r|s|t)=(?:"([^"]*)"|'([^']*)')""")
_REF = re.compile(rb"([A-Z]+)([0-9]+)")
_VALUE = re.compile(rb"<(?:\w+:)?v>([^<]*)</(?:\w+:)?v>")
_FORMULA = re.compile(rb"<(?:\w+:)?f\b[^>]*?(?:/>|>([^<]*)</(?:\w+:)?f>)")
#: A row's start tag, or a cell: every cell's place, in order.
_PLACE = re.compile(rb"(<(?:\w+:)?row\b[^>]*>)|" + _CELL.pattern, re.DOTALL)
_ROW_NUMBER = re.compile(rb"""\br=["']([0-9]+)["']""")
#: What makes a block worth matching cells in: an error cell or a formula.
_NOTEWORTHY = re.compile(rb"""\bt=["']e["']|<(?:\w+:)?f\b""")
#: Byte strings one of which every match of _NOTEWORTHY holds: searched for first, at
#: memory speed, they spare nearly every block the regex (six times slower on its own:
#: a quarter of the time to retry a 200,000-row xlsx report, benchmarks/NOTES.md).
_MARKS = (b"<f", b":f", b't="e', b"t='e")


def _column(letters: bytes) -> int:
    number = 0
    for char in letters:
        number = number * 26 + char - 64
    return number - 1


def _scan_xml(archive: zipfile.ZipFile, index: int, ids: Sequence[int], formats: bool) -> _Found:
    """Error cells, never-calculated formulas in ID columns, and padded ID numbers.

    Blocks with no error cell, no formula and (unless ``formats``) nothing else to see
    are passed over with a byte search; cells are matched only in the others.
    """
    part, styles = _parts(archive, index)
    shaping = _shaping_styles(archive, styles) if formats else {}
    found = _Found(stale=_recalculated_on_load(archive))
    wanted = set(ids)
    place = [-1, -1]  # the row and column of the last cell seen, 0-based
    rest = b""
    with archive.open(part) as fh:
        while block := fh.read(_BLOCK):
            text = rest + block
            cut = _cut(text) if len(block) == _BLOCK else len(text)
            text, rest = text[:cut], text[cut:]
            if shaping:  # every block, in order: a cell without its reference has a place
                for match in _PLACE.finditer(text):
                    if match.group(1) is not None:
                        _next_row(match.group(1), place)
                    else:
                        _look(match.group(2), match.group(3), wanted, shaping, found, place)
            elif _noteworthy(text):
                for match in _CELL.finditer(text):
                    _look(match.group(1), match.group(2), wanted, shaping, found, None)
    return found


def _noteworthy(text: bytes) -> bool:
    return any(mark in text for mark in _MARKS) and _NOTEWORTHY.search(text) is not None


def _next_row(tag: bytes, place: list[int]) -> None:
    """A row starts: its number, or the one after the last (``r`` is optional)."""
    number = _ROW_NUMBER.search(tag)
    place[0] = int(number.group(1)) - 1 if number is not None else place[0] + 1
    place[1] = -1


def _cut(text: bytes) -> int:
    """Where a block's XML may be cut: after its last row or cell. With neither (a run of
    blank cells, a bloated or hostile part), only a tail no cell can start in is carried
    on, so the pass stays linear in the part's size."""
    tags = (b"</row>", b":row>", b"</c>", b":c>")  # an end tag, with or without a prefix
    ends = [text.rfind(tag) + len(tag) for tag in tags if tag in text]
    return max(ends) if ends else max(0, len(text) - _CARRY)


def _look(
    tag: bytes,
    inner: bytes | None,
    wanted: set[int],
    shaping: dict[int, str],
    found: _Found,
    place: list[int] | None,
) -> None:
    """One cell: its attributes ``tag`` and its content ``inner``. Its place is its
    reference, else (``r`` is optional; some streaming writers leave it out) the one after
    the last cell's, when every cell is seen in order (``place``); else it is skipped."""
    attrs = {name: double or single for name, double, single in _ATTR.findall(tag)}
    ref = _REF.fullmatch(attrs.get(b"r", b""))
    if ref is not None:
        where = (int(ref.group(2)) - 1, _column(ref.group(1)))
    elif place is not None:
        where = (place[0], place[1] + 1)
    else:
        return
    if place is not None:
        place[:] = where
    body = inner or b""
    value = _VALUE.search(body)
    if attrs.get(b"t") == b"e":
        found.errors[where] = unescape((value.group(1) if value else b"").decode())
    elif where[1] not in wanted:
        return
    elif (formula := _FORMULA.search(body)) is not None and (value is None or found.stale):
        found.formulas[where] = "=" + unescape((formula.group(1) or b"").decode())
    elif value and attrs.get(b"t", b"n") == b"n" and (code := shaping.get(_style(attrs))):
        number = float(value.group(1))
        if number.is_integer() and abs(number) < MAX_EXACT:
            found.shown[where] = _padded(code, int(number))


def _recalculated_on_load(archive: zipfile.ZipFile) -> bool:
    calc = next(
        (e for e in _xml(archive, "xl/workbook.xml").iter() if e.tag.endswith("}calcPr")), None
    )
    return calc is not None and calc.get("fullCalcOnLoad") in ("1", "true")


def _xml(archive: zipfile.ZipFile, name: str) -> ElementTree.Element:
    """A small XML part, parsed; one with a DTD is refused, so no entity can expand."""
    data = archive.read(name)
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise InputError(f"the workbook's {name} holds a DTD, which no Excel file does")
    return ElementTree.fromstring(data)  # noqa: S314 - no DTD (above): nothing to expand


def _style(attrs: dict[bytes, bytes]) -> int:
    return int(attrs.get(b"s") or 0)


def _parts(archive: zipfile.ZipFile, index: int) -> tuple[str, str | None]:
    """The XML parts of the ``index``-th sheet and of the styles, from the workbook's links."""
    book = _xml(archive, "xl/workbook.xml")
    rels = _xml(archive, "xl/_rels/workbook.xml.rels")
    targets = {r.get("Id"): r.get("Target", "") for r in rels}
    styles = next((r.get("Target") for r in rels if r.get("Type", "").endswith("/styles")), None)
    sheets = [s for s in book.iter() if s.tag.endswith("}sheet")]

    def resolve(target: str) -> str:
        return target.lstrip("/") if target.startswith("/") else posixpath.join("xl", target)

    ids = (sheets[index].get(name) for name in _NS_RELS)
    part = resolve(targets[next((i for i in ids if i is not None), None)])
    return part, resolve(styles) if styles else None


def _shaping_styles(archive: zipfile.ZipFile, styles: str | None) -> dict[int, str]:
    """Style index -> number format, for the formats that show an integer otherwise than
    its digits (``00000``, ``"T-"0000``)."""
    if styles is None or styles not in archive.namelist():
        return {}
    root = _xml(archive, styles)
    codes = dict(_BUILTIN_FORMATS)
    for fmt in root.iter():
        if fmt.tag.endswith("}numFmt"):
            codes[int(fmt.get("numFmtId", "0"))] = fmt.get("formatCode", "")
    xfs = next((e for e in root if e.tag.endswith("}cellXfs")), None)
    shaping = {}
    for index, xf in enumerate(xfs if xfs is not None else ()):
        code = codes.get(int(xf.get("numFmtId", "0")), "")
        if _padded(code, 1) != "1":
            shaping[index] = code
    return shaping


_TOKEN = re.compile(
    r'"([^"]*)"|\\(.)|_.|\*.|\[[^\]]*\]|([0#?])|(General|@)|([-+$/():!^&\'~{}<>= ])|(.)',
    re.IGNORECASE,
)
#: What a digit placeholder shows where the number has no digit left for it.
_EMPTY_PLACE = {"0": "0", "#": "", "?": " "}


def _negative(code: str, magnitude: int) -> str:
    sections = code.split(";")
    if len(sections) > 1 and sections[1].strip():
        return _padded(sections[1], magnitude)
    return "-" + _padded(sections[0], magnitude)


def _padded(code: str, number: int) -> str:
    """``number`` as Excel shows it in format ``code``, for formats made of digit
    placeholders (``00000``, ``000-000``), ``General`` or ``@``, and literal text
    (``"ID-"0000``, ``"T-"#``); others (a decimal point, a date code) show the digits.
    A negative number takes the format's second section without its sign (``(00000)``
    shows -126 as ``(00126)``), or the first with its minus sign first."""
    if number < 0:
        return _negative(code, -number)
    parts: list[str | None] = []  # literal text, or None for a digit placeholder
    places: list[str] = []
    whole = False
    for match in _TOKEN.finditer(code.split(";")[0]):  # a positive ID: the first section
        quoted, escaped, digit, general, literal, other = match.groups()
        if other is not None:
            return str(number)
        if general is not None:  # General or @: the number's own digits, here
            parts.append(str(number))
            whole = True
        elif digit is not None:
            parts.append(None)
            places.append(digit)
        else:
            parts.append(quoted or escaped or literal or "")
    if whole:
        return "".join(part or "" for part in parts)
    if not places:
        return str(number)
    # Digits fill the placeholders from the right; the first takes any left over.
    digits = str(number)
    filled = [_EMPTY_PLACE[place] for place in places]
    for at in range(len(places) - 1, -1, -1):
        if digits:
            filled[at], digits = digits[-1], digits[:-1]
    filled[0] = digits + filled[0]
    shown = iter(filled)
    return "".join(p if p is not None else next(shown) for p in parts)


def _collect(
    name: str,
    rows: list[list[Any]],
    columns: list[tuple[Any, ...]],
    at: int,
    header: list[str],
    ids: Sequence[int],
    found: _Found,
    report: bool,
) -> Sheet:
    """The values by column, and per ID column each cell's kind when it is no ID.

    Rows and columns are looked at whole where they can be (``count``, ``set(map(type))``):
    a cell at a time only in columns that are not all text.
    """
    # A row of error cells, or of formulas never calculated (calamine gives both as
    # empty), is no blank row: it is reported, invalid, with the rest.
    shown = {r - at - 1 for r, _ in (*found.errors, *found.formulas)}
    keep = [i for i, row in enumerate(rows) if i in shown or row.count("") != len(row)]
    every = len(keep) == len(rows)
    rows.clear()  # the cells live on in ``columns``: the rows' lists can go
    width = _width(columns, header, {c for _, c in found.errors})
    del header[width:], columns[width:]
    position = {at + 1 + row: i for i, row in enumerate(keep)}
    kinds: dict[int, list[int]] = {}
    out: list[list[Any]] = []
    for index, column in enumerate(columns):
        cells = list(column) if every else [column[i] for i in keep]
        columns[index] = ()  # one copy of a column at a time
        _overlay(cells, index, found.errors, position)
        if index in ids:  # an ID, in a report too: as ``run`` reads it, its kind flagged
            kinds[index] = _id_cells(cells)
            for at in _overlay(cells, index, found.shown, position):
                kinds[index][at] = 0
            for at in _overlay(cells, index, found.formulas, position):
                kinds[index][at] = FORMULA
        elif set(map(type, cells)) - {str}:
            cells = [_plain(v) if report else _text(v) for v in cells]
        out.append(cells)
    return Sheet(name, header, out, {i: k for i, k in kinds.items() if any(k)})


def _overlay(
    cells: list[Any], index: int, texts: dict[tuple[int, int], str], position: dict[int, int]
) -> list[int]:
    """Put the XML pass's ``texts`` for column ``index`` into ``cells``; where they went."""
    placed = []
    for (number, column), text in texts.items():
        if column == index and number in position:
            cells[position[number]] = text
            placed.append(position[number])
    return placed


def _width(columns: list[tuple[Any, ...]], header: list[str], errors: set[int]) -> int:
    """Columns up to the last with a header or a value: a styled cell far out adds none."""
    width = len(columns)
    while width and not header[width - 1] and width - 1 not in errors:
        if columns[width - 1].count("") != len(columns[width - 1]):
            break
        width -= 1
    return width


def _id_cells(cells: list[Any]) -> list[int]:
    """ID cells made text in place; each one's kind (0 for text and exact numbers)."""
    kinds = [0] * len(cells)
    if set(map(type, cells)) == {str}:
        return kinds
    for at, value in enumerate(cells):
        if type(value) is str:
            continue
        kind = _kind(value)
        if kind == BOOLEAN:
            cells[at] = "TRUE" if value else "FALSE"
        elif kind:
            cells[at] = _text(value)
        else:
            cells[at], cut = id_text(value)
            kinds[at] = LOST if cut else 0
            continue
        kinds[at] = kind
    return kinds
