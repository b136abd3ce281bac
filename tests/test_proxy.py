"""Behind a company proxy and a company CA: proxies from the environment or ``--proxy``,
``NO_PROXY``, proxy credentials kept secret, a 407, and every CA source, against a real
tinyproxy, a CONNECT proxy of the test's own and an https sandbox on loopback."""

from __future__ import annotations

import base64
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from bulklink.errors import UsageError
from bulklink.net.proxy import bypassed, parse_proxy, resolve_proxies
from bulklink.options import ConnectionOptions
from bulklink.sandbox import Reply, Sandbox
from tests.helpers import (
    FAST_UNPACED,
    ORG,
    TOKEN,
    Certs,
    Receiver,
    Tinyproxy,
    files_in,
    free_port,
    invoke,
    make_certs,
    one_line_error,
    one_line_usage_error,
    pairs_csv,
    read_report,
    run,
    sent,
    serve_connect_proxy,
    spawn,
)

N = 6


@pytest.fixture
def https(start_sandbox: Callable[..., Sandbox], certs: Certs) -> Sandbox:
    """An https sandbox whose certificate the test's CA issued for 127.0.0.1."""
    return start_sandbox(**certs.server())


def test_env_proxy_tunnels_https_and_the_store_scope_stays_the_base_url(
    https: Sandbox, certs: Certs, tinyproxy: Tinyproxy, tmp_path: Path
) -> None:
    src = pairs_csv(tmp_path / "in.csv", N)
    env = {"HTTPS_PROXY": tinyproxy.url, "REQUESTS_CA_BUNDLE": str(certs.bundle)}
    log = tmp_path / "run.log"
    result = run(https, src, "--log-file", log, env=env)
    assert result.exit_code == 0, result.output
    assert len(sent(https)) == N
    port = https.url.rsplit(":", 1)[1]
    assert tinyproxy.requests().count(f"CONNECT 127.0.0.1:{port} HTTP/1.1") >= 1
    assert "proxy 127.0.0.1:" in log.read_text()
    assert "network:" not in result.stderr  # the log says it, stderr does not
    # The same input without the proxy: the store counts the pairs as linked already.
    again = run(https, src, "--ca-bundle", certs.bundle)
    assert again.exit_code == 0, again.output
    assert len(sent(https)) == N
    assert {r["outcome"] for r in read_report(tmp_path / "in.results.csv")} == {"already-linked"}


def test_webhook_goes_through_the_env_proxy(
    sandbox: Sandbox, tinyproxy: Tinyproxy, receiver: Receiver, tmp_path: Path
) -> None:
    src = pairs_csv(tmp_path / "in.csv", 2)
    env = {"HTTP_PROXY": tinyproxy.url, "NO_PROXY": sandbox.url.split("//")[1]}
    result = run(sandbox, src, "--notify", receiver.url, "--notify-on", "always", env=env)
    assert result.exit_code == 0, result.output
    assert len(receiver.bodies) == 1
    lines = tinyproxy.requests()
    assert [line.split()[0] for line in lines] == ["POST"]  # the API went direct
    assert lines[0].startswith(f"POST {receiver.url.split('?')[0]}")


@pytest.mark.parametrize("how", ["--proxy", "BULKLINK_PROXY", "HTTPS_PROXY"])
def test_proxy_credentials_are_sent_and_never_shown(
    https: Sandbox, certs: Certs, receiver: Receiver, tmp_path: Path, how: str
) -> None:
    """For the API (CONNECT) and the webhook (plain http) alike, however the proxy is given."""
    user, password = "alice-proxy", "pr0xy-S3CRET/pw"
    expect = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    src = pairs_csv(tmp_path / "in.csv", N)
    log, summary = tmp_path / "run.log", tmp_path / "summary.json"
    state = tmp_path / "state.sqlite3"
    with serve_connect_proxy(expect) as proxy:
        typed = proxy.url.replace("http://", f"http://{user}:pr0xy-S3CRET%2Fpw@")
        given: tuple[str | Path, ...] = ("--proxy", typed) if how == "--proxy" else ()
        env = {} if given else {how: typed, how.replace("HTTPS", "HTTP"): typed}
        result = run(
            https,
            src,
            *given,
            *("--ca-bundle", certs.bundle, "--log-file", log),
            *("--summary-json", summary, "--state", state, "--dry-run"),
            env=env,
        )
        assert result.exit_code == 0, result.output
        assert f"proxy {proxy.url.split('//')[1]} (from {how})" in result.stdout
        assert "from --ca-bundle" in result.stdout
        result = run(
            https,
            src,
            *given,
            *("--ca-bundle", certs.bundle, "--log-file", log),
            *("--summary-json", summary, "--state", state),
            *("--notify", receiver.url, "--notify-on", "always"),
            env=env,
        )
    assert result.exit_code == 0, result.output
    assert len(receiver.raw) == 1
    assert proxy.seen[-1][0].startswith(f"POST {receiver.url.split('?')[0]}")
    assert len(sent(https)) == N
    assert proxy.seen and {auth for _, auth in proxy.seen} == {expect}
    for head in proxy.heads:  # the API's credentials never go to the proxy
        assert TOKEN not in head
        assert ORG not in head
        assert "\nauthorization:" not in head.lower()
    assert all(r.header("proxy-authorization") is None for r in https.requests)
    with sqlite3.connect(state) as db:
        history = json.dumps(db.execute("SELECT * FROM runs").fetchall())
    texts = (result.output, history, log.read_text(), summary.read_text(), *map(str, receiver.raw))
    files = tuple(tmp_path.glob("in.results*"))
    for secret in (password, "pr0xy-S3CRET%2Fpw", user, expect.split()[1]):
        for text in texts:
            assert secret not in text
        for path in files:
            assert secret.encode() not in path.read_bytes()


@pytest.mark.parametrize("typed", ["bob:wr:ong%40pw", "b%6Fb:wr:ong@pw"])
def test_proxy_credentials_typed_half_encoded_are_never_shown(
    sandbox: Sandbox, tmp_path: Path, typed: str
) -> None:
    """A ``:`` left raw in the password, a letter encoded for no reason: the run history
    kept the credentials as typed, a spelling no encoding of the decoded ones gives."""
    user, password = "bob", "wr:ong@pw"
    expect = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    src, state, log = pairs_csv(tmp_path / "in.csv", 2), tmp_path / "s.sqlite3", tmp_path / "l"
    with serve_connect_proxy(expect) as proxy:
        given = proxy.url.replace("//", f"//{typed.replace('@', '%40')}@")
        args = ("run", src, *FAST_UNPACED, "--proxy", given, "--state", state, "--log-file", log)
        child = spawn(sandbox, *args)  # the run history keeps a command line typed as such
        out, err = child.communicate(timeout=30)
    assert child.returncode == 0, err
    assert proxy.seen and {auth for _, auth in proxy.seen} == {expect}
    with sqlite3.connect(state) as db:
        history = json.dumps(db.execute("SELECT * FROM runs").fetchall())
    assert "--proxy http://***@127.0.0.1:" in history
    for text in (out, err, history, log.read_text()):
        assert "ong" not in text and "b%6Fb" not in text


@pytest.mark.parametrize(
    ("given", "scheme"), [("none", "https"), ("wrong", "https"), ("wrong", "http")]
)
def test_a_407_stops_the_run_naming_the_proxy(
    start_sandbox: Callable[..., Sandbox],
    certs: Certs,
    tmp_path: Path,
    given: str,
    scheme: str,
) -> None:
    """Through a CONNECT tunnel (https) or with the request itself (http)."""
    server = start_sandbox(**(certs.server() if scheme == "https" else {}))
    src = pairs_csv(tmp_path / "in.csv", 40)
    with serve_connect_proxy("Basic right") as proxy:
        typed = proxy.url.replace("//", "//bob:wrong-pass@") if given == "wrong" else proxy.url
        result = run(
            server, src, "--proxy", typed, "--ca-bundle", certs.bundle, "--concurrency", "2"
        )
    assert result.exit_code == 3, result.output
    assert f"HTTP 407 from the proxy {proxy.url.split('//')[1]}: it " in result.stderr
    assert "wrong-pass" not in result.output
    assert 1 <= len(proxy.seen) <= 2  # the requests already started, no more
    rows = read_report(tmp_path / "in.results.csv")
    assert len(rows) == 40
    assert {r["outcome"] for r in rows} == {"skipped"}
    assert sent(server) == []


@pytest.mark.parametrize(
    ("refusal", "said"),
    [
        (b"401 Unauthorized", "it refused the credentials in --proxy"),
        (b"403 Forbidden", "it refuses to connect to the API's host"),
    ],
)
def test_a_proxy_refusing_the_connect_with_401_or_403_stops_the_run(
    https: Sandbox, certs: Certs, tmp_path: Path, refusal: bytes, said: str
) -> None:
    """tinyproxy answers wrong credentials 401, not 407: each row was retried, six failed
    logins a row for the proxy's account (a lockout), and the run ended exit 1."""
    src = pairs_csv(tmp_path / "in.csv", 30)
    with serve_connect_proxy("Basic right") as proxy:
        proxy.refusal = refusal
        typed = proxy.url.replace("//", "//bob:wrong-pass@")
        result = run(
            https, src, "--proxy", typed, "--ca-bundle", certs.bundle, "--concurrency", "2"
        )
    assert result.exit_code == 3, result.output
    status = refusal.split()[0].decode()
    assert f"HTTP {status} from the proxy {proxy.url.split('//')[1]}: {said}" in result.stderr
    assert "wrong-pass" not in result.output
    assert 1 <= len(proxy.seen) <= 2  # the requests already started, no more
    rows = read_report(tmp_path / "in.results.csv")
    assert {r["outcome"] for r in rows} == {"skipped"}
    assert sent(https) == []


def test_a_proxy_that_fails_the_connect_otherwise_is_retried(
    https: Sandbox, certs: Certs, tmp_path: Path
) -> None:
    src = pairs_csv(tmp_path / "in.csv", 2)
    with serve_connect_proxy("Basic never") as proxy:
        proxy.refusal = b"502 Bad Gateway"
        result = run(
            https, src, "--proxy", proxy.url, "--ca-bundle", certs.bundle, "--max-retries", "1"
        )
    assert result.exit_code == 1, result.output
    assert len(proxy.seen) == 4  # two rows, two attempts each
    rows = read_report(tmp_path / "in.results.csv")
    assert {r["outcome"] for r in rows} == {"failed"}
    assert {r["error"] for r in rows} == {
        f"the proxy {proxy.url.split('//')[1]} answered HTTP 502 (gave up after 2 attempts)"
    }


@pytest.mark.parametrize(
    "no_proxy", ["127.0.0.1", "*", "localhost, 127.0.0.1", "127.0.0.0/8", "{host_port}"]
)
def test_no_proxy_goes_direct(https: Sandbox, certs: Certs, tmp_path: Path, no_proxy: str) -> None:
    """The env proxy is a port where nothing listens: only a bypass can link the rows."""
    src = pairs_csv(tmp_path / "in.csv", 3)
    dead = f"http://127.0.0.1:{free_port()}"
    env = {"HTTPS_PROXY": dead, "NO_PROXY": no_proxy.format(host_port=https.url.split("//")[1])}
    result = run(https, src, "--ca-bundle", certs.bundle, env=env)
    assert result.exit_code == 0, result.output
    assert len(sent(https)) == 3


def test_loopback_goes_through_the_env_proxy_unless_no_proxy_names_it(
    https: Sandbox, certs: Certs, tmp_path: Path
) -> None:
    src = pairs_csv(tmp_path / "in.csv", 3)
    dead = f"http://127.0.0.1:{free_port()}"
    env = {"HTTPS_PROXY": dead, "NO_PROXY": "example.com"}
    result = run(https, src, "--ca-bundle", certs.bundle, "--max-retries", "0", env=env)
    assert result.exit_code == 1, result.output
    assert "cannot connect to the proxy 127.0.0.1:" in result.stderr
    assert sent(https) == []
    # --no-proxy and --proxy '' go direct whatever the environment says.
    for way in (("--no-proxy",), ("--proxy", "")):
        result = run(https, src, "--ca-bundle", certs.bundle, *way, env=env)
        assert result.exit_code == 0, result.output


#: host, NO_PROXY, whether it goes direct ("-" is an empty NO_PROXY).
NO_PROXY_TABLE = """
api.corp.example  corp.example                   direct
api.corp.example  .corp.example                  direct
corp.example      .corp.example                  direct
xcorp.example     corp.example                   proxy
api.corp.example  other.example,*.corp.example   direct
10.1.2.3          10.0.0.0/8                     direct
10.1.2.3          10.1.2.3                       direct
10.1.2.4          10.1.2.3                       proxy
::1               [::1]                          direct
::1               [::1]:443                      direct
::1               [::1]:80                       proxy
::1               ::1                            direct
2001:db8::1:443   2001:db8::1:443                direct
127.0.0.1         -                              proxy
localhost         localhost:443                  direct
localhost         localhost:80                   proxy
anything          *                              direct
"""


@pytest.mark.parametrize("case", NO_PROXY_TABLE.strip().splitlines())
def test_no_proxy_entries(case: str) -> None:
    host, no_proxy, way = case.split()
    assert bypassed(host, 443, "" if no_proxy == "-" else no_proxy) is (way == "direct")


@pytest.mark.parametrize(
    ("env", "url", "expected"),
    [
        ({"HTTPS_PROXY": "http://p1:1"}, "https://api.example", "p1:1 (from HTTPS_PROXY)"),
        ({"https_proxy": "p2:2", "HTTPS_PROXY": "p1:1"}, "https://a.b", "p2:2 (from https_proxy)"),
        ({"HTTPS_PROXY": "http://p1:1"}, "http://api.example", "none"),
        ({"HTTP_PROXY": "http://p3:3"}, "http://api.example", "p3:3 (from HTTP_PROXY)"),
        (
            {"BULKLINK_PROXY": "p4:4", "HTTPS_PROXY": "p1:1"},
            "https://a.b",
            "p4:4 (from BULKLINK_PROXY)",
        ),
        ({"HTTPS_PROXY": "p1:1", "no_proxy": "a.b"}, "https://x.a.b", "none"),
        # ALL_PROXY for a scheme without its own, as curl reads it (it went direct).
        ({"ALL_PROXY": "http://p5:5"}, "https://a.b", "p5:5 (from ALL_PROXY)"),
        ({"all_proxy": "p6:6", "HTTP_PROXY": "p3:3"}, "https://a.b", "p6:6 (from all_proxy)"),
        ({"all_proxy": "p6:6", "HTTPS_PROXY": "p1:1"}, "https://a.b", "p1:1 (from HTTPS_PROXY)"),
        ({"ALL_PROXY": "p5:5", "NO_PROXY": "a.b"}, "https://a.b", "none"),
    ],
)
def test_which_proxy_the_environment_names(env: dict[str, str], url: str, expected: str) -> None:
    assert resolve_proxies(ConnectionOptions(), env).describe(url) == expected


@pytest.mark.parametrize(
    "value",
    ["socks5://127.0.0.1:1080", "https://proxy:443", "http://p:1/path", "http://:pSECRET@p:1"],
)
def test_unsupported_proxies_are_refused_before_sending(
    sandbox: Sandbox, tmp_path: Path, value: str
) -> None:
    src = pairs_csv(tmp_path / "in.csv", 2)
    one_line_usage_error(run(sandbox, src, "--proxy", value))
    one_line_usage_error(run(sandbox, src, env={"HTTPS_PROXY": value, "HTTP_PROXY": value}))
    one_line_usage_error(run(sandbox, src, env={"ALL_PROXY": value}))
    assert sandbox.requests == []
    assert files_in(tmp_path) == ["in.csv"]
    with pytest.raises(UsageError, match="--proxy or --no-proxy"):
        resolve_proxies(ConnectionOptions(proxy="p:1", no_proxy=True))
    assert parse_proxy("user:pw@p:8", "--proxy").url == "http://p:8"


# -- CA sources -----------------------------------------------------------------------------------

SOURCES = ["--ca-bundle", "BULKLINK_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"]


@pytest.mark.parametrize("source", SOURCES)
def test_each_ca_source_in_its_order(
    https: Sandbox, certs: Certs, tmp_path: Path, source: str
) -> None:
    """The right CA in ``source``, another CA in every source after it: the first wins."""
    other = make_certs(tmp_path / "other").bundle
    at = SOURCES.index(source)
    env = {name: str(other) for name in SOURCES[at + 1 :]}
    args: tuple[str | Path, ...] = ()
    if source == "--ca-bundle":
        args = ("--ca-bundle", certs.bundle)
    else:
        env[source] = str(certs.bundle)
    src = pairs_csv(tmp_path / "in.csv", 2)
    dry = run(https, src, *args, "--dry-run", env=env)
    assert f"CA certificates: the CA bundle {certs.bundle} (from {source})" in dry.stdout
    result = run(https, src, *args, env=env)
    assert result.exit_code == 0, result.output
    assert len(sent(https)) == 2


@pytest.mark.parametrize("content", [None, b"", b"not a certificate\n", "folder"])
@pytest.mark.parametrize("source", ["--ca-bundle", "REQUESTS_CA_BUNDLE"])
def test_a_missing_or_empty_bundle_is_refused_before_sending(
    sandbox: Sandbox, tmp_path: Path, content: bytes | str | None, source: str
) -> None:
    bundle = tmp_path / "ca.pem"
    if content == "folder":
        bundle.mkdir()
    elif isinstance(content, bytes):
        bundle.write_bytes(content)
    src = pairs_csv(tmp_path / "in.csv", 2)
    if source == "--ca-bundle":
        result = run(sandbox, src, "--ca-bundle", bundle)
    else:
        result = run(sandbox, src, env={source: str(bundle)})
    line = one_line_usage_error(result)
    assert source in line and str(bundle) in line
    assert sandbox.requests == []
    assert not (tmp_path / "in.results.csv").exists()
    dry = run(sandbox, src, "--dry-run", env={"REQUESTS_CA_BUNDLE": str(bundle)})
    assert dry.exit_code == 2


def test_sandbox_command_refuses_a_cert_without_its_key(certs: Certs) -> None:
    cert = certs.server()["tls_cert"]
    result = invoke("sandbox", "--tls-cert", cert, "--port", "0")
    assert result.exit_code == 2
    assert "--tls-key" in one_line_error(result)


def test_proxy_credentials_echoed_into_answers_are_masked_in_the_report_and_summary(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    """A proxy's error page (or the server behind it) quoting the request's
    Proxy-Authorization reached the report and the summary JSON unmasked: the client's
    redactor knew the API's credentials only. The sandbox plays the plain-http proxy."""
    secret = "puser:pSECRETpass9"
    basic = base64.b64encode(secret.encode()).decode()
    proxy = start_sandbox(
        script={
            "T00001": [
                Reply(502, f"Upstream error. Your headers: Proxy-Authorization: Basic {basic}")
            ],
            "T00002": [Reply(502, {"message": f"proxy user {secret} not allowed upstream"})],
            "T00003": [
                Reply(200, {"status": True, "data": {"id": "T00003", "title": f"via {secret}"}})
            ],
            # The user name alone is no secret, and may be a word an answer holds.
            "T00004": [
                Reply(200, {"status": True, "data": {"id": "T00004", "title": "Customer puser"}})
            ],
        }
    )
    src = pairs_csv(tmp_path / "in.csv", 4)
    summary = tmp_path / "summary.json"
    via = proxy.url.replace("//", f"//{secret}@")
    result = run(
        proxy, src, "--base-url", "http://127.0.0.1:9", "--allow-http", "--proxy", via,
        "--max-retries", "0", "--summary-json", summary,
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    rows = read_report(tmp_path / "in.results.csv")
    assert [r["outcome"] for r in rows] == ["failed", "failed", "linked", "linked"]
    assert rows[3]["ticket.title"] == "Customer puser"
    assert "***" in rows[0]["error"] and "***" in rows[1]["error"]
    assert rows[2]["ticket.title"] == "via ***"
    for text in ((tmp_path / "in.results.csv").read_text(), summary.read_text(), result.output):
        assert "pSECRETpass9" not in text and basic not in text
