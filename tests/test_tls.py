"""A server that cannot be trusted stops the run at once (exit 3), as rejected credentials
do: self-signed, wrong host, expired, or a handshake that fails; against an https sandbox
with certificates from a CA made in the test."""

from __future__ import annotations

import asyncio
import datetime
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bulklink import link_pairs
from bulklink.errors import Blocked
from bulklink.models import LinkResult, Outcome
from bulklink.net.notify import send_notice_sync
from bulklink.net.tls import Trust
from bulklink.sandbox import Sandbox
from tests.helpers import (
    FAST_UNPACED,
    ORG,
    TOKEN,
    Certs,
    env_for,
    invoke,
    make_certs,
    pairs_csv,
    read_report,
    run,
    serve_connect_proxy,
)

N = 60
PAST = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)


def _untrusted(certs: Certs, tmp_path: Path, case: str) -> tuple[dict[str, Any], list[str]]:
    """The sandbox's TLS files for ``case``, and the options that trust ``certs``' CA."""
    trusted = ["--ca-bundle", str(certs.bundle)]
    if case == "self-signed":  # a CA nobody was told about; the system store is used
        return make_certs(tmp_path / "stranger").server(), []
    if case == "wrong host":
        return certs.server("wrong.example"), trusted
    return certs.server("127.0.0.1", not_after=PAST), trusted


@pytest.mark.parametrize(
    ("case", "why"),
    [
        ("self-signed", "could not be verified"),
        ("wrong host", "mismatch, certificate is not valid for '127.0.0.1'"),
        ("expired", "could not be verified (certificate has expired)"),
    ],
)
def test_a_certificate_that_does_not_verify_stops_the_run(
    start_sandbox: Callable[..., Sandbox], certs: Certs, tmp_path: Path, case: str, why: str
) -> None:
    tls, trust = _untrusted(certs, tmp_path, case)
    server = start_sandbox(**tls)
    src = pairs_csv(tmp_path / "in.csv", N)
    result = run(server, src, *trust, "--concurrency", "4", "-q")
    assert result.exit_code == 3, result.output
    assert "Traceback" not in result.output
    line = result.stderr.splitlines()[0]
    assert line.startswith("bulklink: error: the certificate of 127.0.0.1 ")
    assert why in line
    source = f"the CA bundle {certs.bundle} (from --ca-bundle)" if trust else "the system's"
    assert source in line and "--ca-bundle" in line and "nothing more was sent" in line
    rows = read_report(tmp_path / "in.results.csv")
    assert len(rows) == N
    assert {r["outcome"] for r in rows} == {"skipped"}
    assert sum(int(r["attempts"]) for r in rows) <= 4  # the requests already started
    assert server.requests == []


def test_a_failing_handshake_stops_the_run(sandbox: Sandbox, tmp_path: Path) -> None:
    """https:// to a server that speaks plain http: not a certificate, still no retry."""
    src = pairs_csv(tmp_path / "in.csv", 20)
    url = sandbox.url.replace("http://", "https://")
    result = invoke("run", src, *FAST_UNPACED, "--concurrency", "2", "-q", env=env_for(url))
    assert result.exit_code == 3, result.output
    line = result.stderr.splitlines()[0]
    assert line.startswith("bulklink: error: the TLS handshake with 127.0.0.1 failed (")
    assert "--ca-bundle" in line
    rows = read_report(tmp_path / "in.results.csv")
    assert {r["outcome"] for r in rows} == {"skipped"}


def test_link_pairs_stops_on_an_untrusted_server_and_skips_the_rest(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    server = start_sandbox(**make_certs(tmp_path / "stranger").server())
    pairs = [(f"S{i}", f"L{i}") for i in range(30)]

    async def main() -> list[LinkResult]:
        results = []
        with pytest.raises(Blocked, match=r"the certificate of 127\.0\.0\.1 could not be verified"):
            async for result in link_pairs(
                pairs, base_url=server.url, token=TOKEN, org_id=ORG, concurrency=2
            ):
                results.append(result)
        return results

    results = asyncio.run(main())
    assert len(results) == 30
    assert {r.outcome for r in results} == {Outcome.SKIPPED}


def test_a_notice_to_an_untrusted_webhook_is_tried_once(
    start_sandbox: Callable[..., Sandbox], certs: Certs
) -> None:
    server = start_sandbox(**certs.server("wrong.example"))
    url = f"{server.url}/services/T1/B2/hook-SECRET-path-long"
    warning = send_notice_sync(url, {"text": "x"}, trust=Trust(certs.bundle, "--ca-bundle"))
    assert warning is not None
    assert warning.startswith("warning: the notice to 127.0.0.1 was not delivered: the cert")
    assert "mismatch" in warning and "--ca-bundle" in warning and "tries" not in warning
    assert "hook-SECRET" not in warning


def test_an_inspecting_proxy_whose_ca_is_not_trusted_stops_the_run(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    """The tunnel is made; the certificate behind it is the proxy CA's, which nobody gave."""
    server = start_sandbox(**make_certs(tmp_path / "inspecting").server())
    src = pairs_csv(tmp_path / "in.csv", 10)
    with serve_connect_proxy() as proxy:
        result = run(server, src, "--concurrency", "1", env={"HTTPS_PROXY": proxy.url})
    assert result.exit_code == 3, result.output
    assert proxy.seen[0][0].startswith("CONNECT 127.0.0.1:")
    line = result.stderr.splitlines()[0]
    assert "the certificate of 127.0.0.1 could not be verified" in line
    assert "with the system's CA store: if a company proxy inspects TLS" in line
    assert server.requests == []


def test_the_sandbox_command_serves_https(certs: Certs, tmp_path: Path) -> None:
    tls = certs.server()
    argv = [sys.executable, "-m", "bulklink", "sandbox", "--port", "0", "--token", TOKEN]
    argv += ["--org-id", ORG, "--tls-cert", str(tls["tls_cert"]), "--tls-key", str(tls["tls_key"])]
    with subprocess.Popen(argv, stderr=subprocess.PIPE, text=True) as proc:
        assert proc.stderr is not None
        try:
            announced = proc.stderr.readline()
            url = re.findall(r"https://127\.0\.0\.1:\d+", announced)[0]
            src = pairs_csv(tmp_path / "in.csv", 3)
            result = invoke(
                "run", src, *FAST_UNPACED, "--ca-bundle", certs.bundle, env=env_for(url)
            )
        finally:
            proc.send_signal(signal.SIGTERM)
    assert result.exit_code == 0, result.output
    assert {r["outcome"] for r in read_report(tmp_path / "in.results.csv")} == {"linked"}
