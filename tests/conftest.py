"""Shared fixtures: a real sandbox on 127.0.0.1 and a way to run the CLI against it."""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from bulklink.cli import cli
from bulklink.sandbox import Sandbox, SandboxConfig, serve_in_thread

TOKEN = "tok-SECRET-abc123"
ORG = "org_test"
# Options for CLI runs in tests: retries after 10 ms, no progress bar on stderr.
FAST = ("--backoff", "0.01", "--no-progress")
# The same without the rate limit, where pacing is not what the test is about.
FAST_UNPACED = (*FAST, "--rate", "0")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No credentials from the developer's shell, and a state store of the test's own:
    never the user's (subprocesses inherit this environment too)."""
    for name in (
        "THENA_TOKEN",
        "THENA_API_KEY",
        "THENA_ORG_ID",
        "THENA_BASE_URL",
        "BULKLINK_STATE",
        "BULKLINK_NOTIFY_URL",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("xdg-state")))


@pytest.fixture
def start_sandbox() -> Iterator[Callable[..., Sandbox]]:
    """Start sandboxes with any SandboxConfig fields; all are stopped after the test."""
    stack: list[Any] = []

    def start(**config: Any) -> Sandbox:
        config.setdefault("token", TOKEN)
        config.setdefault("org_id", ORG)
        ctx = serve_in_thread(SandboxConfig(**config))
        server = ctx.__enter__()
        stack.append(ctx)
        return server

    yield start
    for ctx in reversed(stack):
        ctx.__exit__(None, None, None)


@pytest.fixture
def sandbox(start_sandbox: Callable[..., Sandbox]) -> Sandbox:
    return start_sandbox()


def invoke(
    *args: str | Path, env: dict[str, str] | None = None, input: str | None = None
) -> Result:
    """Run the CLI in-process, as a user would type it; stdout and stderr kept apart."""
    return CliRunner().invoke(
        cli, [str(a) for a in args], env=env, input=input, catch_exceptions=False
    )


def run_against(server: Sandbox, *args: str | Path, **kwargs: Any) -> Result:
    """``bulklink run ...`` against a sandbox with valid credentials from the environment."""
    env = {"THENA_TOKEN": TOKEN, "THENA_ORG_ID": ORG, "THENA_BASE_URL": server.url}
    env.update(kwargs.pop("env", {}) or {})
    return invoke(*args, env=env, **kwargs)


def write_csv(
    path: Path, rows: Sequence[Sequence[str]], delimiter: str = ",", encoding: str = "utf-8"
) -> Path:
    with path.open("w", newline="", encoding=encoding) as fh:
        csv.writer(fh, delimiter=delimiter).writerows(rows)
    return path


def read_report(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def pairs_csv(path: Path, n: int, prefix: str = "T") -> Path:
    """``n`` distinct valid pairs."""
    rows = [["sourceTicketId", "linkedTicketId"]]
    rows += [[f"{prefix}{i:05d}", f"{prefix}L{i:05d}"] for i in range(1, n + 1)]
    return write_csv(path, rows)
