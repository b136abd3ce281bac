"""Fixtures only (helpers are in ``tests/helpers.py``): a clean environment, real sandboxes
on 127.0.0.1, a webhook receiver and a scripted linker."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bulklink.sandbox import Sandbox, SandboxConfig, serve_in_thread
from tests.helpers import (
    ORG,
    TOKEN,
    Certs,
    Receiver,
    ScriptedLinker,
    Tinyproxy,
    make_certs,
    run_tinyproxy,
    serve_receiver,
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No credentials, proxies or CA bundles from the developer's shell, and a state store
    of the test's own: never the user's (subprocesses inherit this environment too)."""
    for name in (
        "THENA_TOKEN",
        "THENA_API_KEY",
        "THENA_ORG_ID",
        "THENA_BASE_URL",
        "BULKLINK_STATE",
        "BULKLINK_NOTIFY_URL",
        "BULKLINK_PROXY",
        "BULKLINK_CA_BUNDLE",
        "REQUESTS_CA_BUNDLE",
        "SSL_CERT_FILE",
        *(f"{name}_proxy" for name in ("http", "https", "no", "all")),
        *(f"{name}_PROXY" for name in ("HTTP", "HTTPS", "NO", "ALL")),
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


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A webhook receiver on 127.0.0.1 (:class:`tests.helpers.Receiver`)."""
    with serve_receiver() as hook:
        yield hook


@pytest.fixture
def linker() -> ScriptedLinker:
    """The runner's edge without HTTP (:class:`tests.helpers.ScriptedLinker`): set its
    ``script`` per source ID; every source not scripted is linked at once."""
    return ScriptedLinker()


@pytest.fixture
def tinyproxy(tmp_path: Path) -> Iterator[Tinyproxy]:
    """Debian's tinyproxy on 127.0.0.1 (:class:`tests.helpers.Tinyproxy`)."""
    with run_tinyproxy(tmp_path / "tinyproxy") as proxy:
        yield proxy


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    """A CA made for the test (:class:`tests.helpers.Certs`)."""
    return make_certs(tmp_path / "certs")
