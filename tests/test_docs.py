"""The README checked against the code, so that it cannot drift (as sqlite-utils does).

The README marks the tables these tests read with an HTML comment on the line before
(invisible on GitHub): ``<!-- options: run retry -->`` (the options of those commands),
``<!-- environment -->`` and ``<!-- exit-codes -->``. A failure
names the README line or the option to change.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import click
import pytest

from bulklink import cli as cli_module
from bulklink import errors
from bulklink.cli import cli
from bulklink.options import ENVIRONMENT

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PACKAGE = ROOT / "bulklink"

#: Options of other programs the docs show (pytest-cov, ruff, coreutils' timeout,
#: node_exporter, benchmarks/bench.py and xlsx_bench.py): not bulklink's, so not checked.
FOREIGN_OPTIONS = frozenset(
    {
        "--cov",
        "--check",
        "--preserve-status",
        "--kill-after",
        "--collector",
        "--quick",
        "--only",
        "--rows",
        "--before",
    }
)

_MARKER = re.compile(r"^<!--\s*([a-z-]+)(?::\s*([^>]*?))?\s*-->\s*$")
_CODE = re.compile(r"`([^`]*)`")
_OPTION = re.compile(r"(?<![\w-])--?[A-Za-z][\w-]*")
_CELL_SPLIT = re.compile(r"(?<!\\)\|")


@dataclass(frozen=True)
class Row:
    """One body row of a marked table, with its README line number for messages."""

    line: int
    cells: list[str]

    def spans(self, column: int) -> list[str]:
        """The code spans of a cell (`` `--rate R` `` gives ``--rate R``)."""
        return _CODE.findall(self.cells[column]) if column < len(self.cells) else []


@dataclass(frozen=True)
class Table:
    kind: str
    args: tuple[str, ...]
    rows: list[Row]


def _split(line: str) -> list[str]:
    return [cell.strip() for cell in _CELL_SPLIT.split(line.strip().strip("|"))]


def _tables(text: str) -> Iterator[Table]:
    """Every table that follows a marker comment, body rows only."""
    lines = text.splitlines()
    for index, line in enumerate(lines):
        match = _MARKER.match(line.strip())
        if not match:
            continue
        rows: list[Row] = []
        at = index + 1
        while at < len(lines) and not lines[at].strip():
            at += 1
        body = at + 2  # the header and the |---| line
        assert at < len(lines) and lines[at].startswith("|"), (
            f"README.md:{index + 1}: the marker {line.strip()} is not followed by a table"
        )
        for number in range(body, len(lines)):
            if not lines[number].startswith("|"):
                break
            rows.append(Row(number + 1, _split(lines[number])))
        yield Table(match.group(1), tuple((match.group(2) or "").split()), rows)


@pytest.fixture(scope="module")
def readme() -> str:
    return README.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def tables(readme: str) -> list[Table]:
    return list(_tables(readme))


def _one(tables: list[Table], kind: str) -> Table:
    found = [t for t in tables if t.kind == kind]
    assert len(found) == 1, f"README.md needs exactly one <!-- {kind} --> table, has {len(found)}"
    return found[0]


def _names(spec: str) -> list[str]:
    """``-o, --output PATH`` -> ``-o``, ``--output``; ``--progress/--no-progress`` -> both."""
    return _OPTION.findall(spec)


def _click_options(command: click.Command) -> dict[str, click.Option]:
    """Every spelling of every option of a command (``-h/--help`` is not a param)."""
    found: dict[str, click.Option] = {}
    for param in command.params:
        if isinstance(param, click.Option):
            for name in (*param.opts, *param.secondary_opts):
                found[name] = param
    return found


def _readme_options(tables: list[Table], command: str) -> dict[str, Row]:
    """The README's rows for a command's options, by every option name in their first cell."""
    rows: dict[str, Row] = {}
    for table in tables:
        if table.kind != "options" or command not in table.args:
            continue
        for row in table.rows:
            spans = row.spans(0)
            assert spans, f"README.md:{row.line}: the option cell has no `code`"
            for name in _names(spans[0]):
                assert name not in rows, (
                    f"README.md:{row.line}: {name} of `bulklink {command}` is already in "
                    f"the table at README.md:{rows[name].line}"
                )
                rows[name] = row
    return rows


COMMANDS = sorted(cli.commands) if isinstance(cli, click.Group) else []


def test_every_command_is_checked() -> None:
    assert COMMANDS == ["report", "retry", "run", "runs", "sandbox"]


@pytest.mark.parametrize("name", COMMANDS)
def test_option_tables_list_exactly_the_options_of_help(tables: list[Table], name: str) -> None:
    command = cli.commands[name]
    in_help = set(_click_options(command))
    in_readme = set(_readme_options(tables, name))
    missing, stale = sorted(in_help - in_readme), sorted(in_readme - in_help)
    assert not missing and not stale, (
        f"README.md's option tables for `bulklink {name}` (<!-- options: ... {name} -->) "
        f"drifted from `bulklink {name} --help`: "
        f"missing {', '.join(missing) or 'nothing'}; "
        f"no such option {', '.join(stale) or 'nothing'}"
    )


def _shown_default(option: click.Option) -> object | None:
    """The default ``--help`` prints, or None when it prints none."""
    if not option.show_default or option.is_flag or option.default is None:
        return None
    return option.default


def _same(stated: str, default: object) -> bool:
    if isinstance(default, int | float) and not isinstance(default, bool):
        try:
            return float(stated) == float(default)
        except ValueError:
            return False
    return stated == str(default)


@pytest.mark.parametrize("name", COMMANDS)
def test_defaults_in_the_tables_match_help(tables: list[Table], name: str) -> None:
    command = cli.commands[name]
    rows = _readme_options(tables, name)
    drift = []
    for spelling, option in _click_options(command).items():
        default = _shown_default(option)
        if default is None or spelling not in option.opts[-1:]:  # each option once
            continue
        row = rows[spelling]
        stated = row.spans(1)
        if not stated or not _same(stated[0], default):
            said = f"`{stated[0]}`" if stated else repr(row.cells[1] if len(row.cells) > 1 else "")
            drift.append(
                f"README.md:{row.line}: {spelling} of `bulklink {name}` defaults to "
                f"{default!r} in --help, the README says {said}"
            )
    assert not drift, "\n".join(drift)


@pytest.mark.parametrize("name", COMMANDS)
def test_variables_of_options_are_named_in_their_rows(tables: list[Table], name: str) -> None:
    """An option whose help says ``[env var: X]`` reads X, says so in the README, and X is
    one of the variables the library reads."""
    command = cli.commands[name]
    rows = _readme_options(tables, name)
    drift = []
    for spelling, option in _click_options(command).items():
        if spelling not in option.opts[-1:]:
            continue
        for variable in re.findall(r"env var: ([A-Z_]+)", option.help or ""):
            if variable not in ENVIRONMENT:
                drift.append(f"{spelling} says it reads {variable}, not in ENVIRONMENT")
            if variable not in rows[spelling].cells[-1]:
                drift.append(
                    f"README.md:{rows[spelling].line}: the row of {spelling} of "
                    f"`bulklink {name}` does not name its variable {variable}"
                )
    assert not drift, "\n".join(drift)


def test_environment_table_lists_exactly_the_variables_read(tables: list[Table]) -> None:
    table = _one(tables, "environment")
    rows = {span: row for row in table.rows for span in row.spans(0)[:1]}
    missing = sorted(set(ENVIRONMENT) - set(rows))
    stale = sorted(set(rows) - set(ENVIRONMENT))
    assert not missing and not stale, (
        "README.md's environment table drifted from bulklink.options.ENVIRONMENT: "
        f"missing {', '.join(missing) or 'nothing'}; not read {', '.join(stale) or 'nothing'}"
    )
    for variable, meaning in ENVIRONMENT.items():
        for option in re.findall(r"--[a-z][a-z-]*", meaning):
            assert option in rows[variable].cells[1], (
                f"README.md:{rows[variable].line}: {variable} stands for {option}, "
                "which its row does not say"
            )


def _cli_exit_codes() -> set[int]:
    """The codes the CLI documents: keys of a mapping, or the clauses of the help text."""
    codes = cli_module.EXIT_CODES
    if isinstance(codes, Mapping):
        return {int(code) for code in codes}
    text = " ".join(str(codes).split())
    clauses = re.findall(r"(?:codes?:|;)\s*(\d+(?:/\d+)*)\s", text)
    return {int(n) for clause in clauses for n in clause.split("/")}


def _readme_exit_codes(tables: list[Table]) -> dict[int, Row]:
    return {
        int(n): row
        for row in _one(tables, "exit-codes").rows
        for n in re.findall(r"\d+", row.cells[0])
    }


def test_exit_code_table_matches_the_cli(tables: list[Table]) -> None:
    in_readme, in_cli = set(_readme_exit_codes(tables)), _cli_exit_codes()
    assert in_cli, "no exit codes found in bulklink.cli.EXIT_CODES"
    assert in_readme == in_cli, (
        "README.md's exit-code table drifted from bulklink.cli.EXIT_CODES: "
        f"only in the README {sorted(in_readme - in_cli)}; only in the CLI "
        f"{sorted(in_cli - in_readme)}"
    )


def _error_classes(base: type[errors.BulklinkError]) -> Iterator[type[errors.BulklinkError]]:
    for sub in base.__subclasses__():
        yield sub
        yield from _error_classes(sub)


def test_exit_code_table_covers_every_error_and_signal(tables: list[Table]) -> None:
    documented = set(_readme_exit_codes(tables))
    raised = {cls.exit_code for cls in _error_classes(errors.BulklinkError)}
    raised |= {128 + s for s in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM)}
    assert raised <= documented, (
        f"exit codes not in README.md's table: {sorted(raised - documented)}"
    )


def _all_option_names() -> set[str]:
    names = set(_click_options(cli)) | {"-h", "--help"}
    for command in cli.commands.values():
        names |= set(_click_options(command))
    return names


def test_no_option_mentioned_that_does_not_exist(readme: str) -> None:
    known = _all_option_names() | FOREIGN_OPTIONS
    texts = {"README.md": readme}
    texts |= {f"docs/{p.name}": p.read_text("utf-8") for p in (ROOT / "docs").glob("*.md")}
    stale = [
        f"{name}:{number}: {option}"
        for name, text in texts.items()
        for number, line in enumerate(text.splitlines(), 1)
        for option in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", line)
        if option not in known
    ]
    assert not stale, "options no bulklink command has:\n" + "\n".join(stale)


@pytest.mark.parametrize("name", ["bulklink", *COMMANDS])
def test_every_command_has_help_and_examples(name: str) -> None:
    command = cli if name == "bulklink" else cli.commands[name]
    assert (command.help or "").strip(), f"`{name}` has no help text"
    epilog = command.epilog or ""
    assert "Examples:" in epilog, f"`{name}` has no examples in its epilog"
    examples = epilog.split("Examples:", 1)[1]
    prefix = "bulklink" if name == "bulklink" else f"bulklink {name}"
    assert re.search(rf"^\s+{re.escape(prefix)}\b", examples, re.MULTILINE), (
        f"`{name}`'s examples never show `{prefix} ...`"
    )
