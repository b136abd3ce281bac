"""Credentials: both auth modes, where a token or key comes from (flags, environment,
files), the JWT preflight, and the secret kept out of every output, even when a server
echoes it back.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
import stat
import time
import zipfile
from collections.abc import (
    Callable,
)
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest

from bulklink.net.credentials import resolve_auth
from bulklink.options import ConnectionOptions
from bulklink.redaction import secret_forms
from bulklink.sandbox import Reply, Sandbox
from tests.helpers import (
    FAST,
    FAST_UNPACED,
    HEAD,
    KEY,
    ODD_TOKEN,
    ORG,
    TOKEN,
    invoke,
    journal_of,
    lock_of,
    make_jwt,
    no_secret_anywhere,
    one_line_usage_error,
    pairs_csv,
    read_report,
    run,
    run_against,
    write_csv,
)

# -- both auth modes --------------------------------------------------------------------------


@pytest.mark.parametrize("via", ["flag", "env", "file"])
@pytest.mark.parametrize("with_org", [True, False], ids=["org", "no-org"])
def test_api_key_mode_sends_x_api_key_and_no_authorization(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path, via: str, with_org: bool
) -> None:
    server = start_sandbox(api_key=KEY)
    src = pairs_csv(tmp_path / "in.csv", 4)
    out, log, summary = tmp_path / "out.csv", tmp_path / "run.log", tmp_path / "summary.json"
    env = {"THENA_BASE_URL": server.url}
    args: list[str | Path] = ["run", src, "-o", out, "--log-file", log, "--summary-json", summary]
    if via == "flag":
        args += ["--api-key", KEY]
    elif via == "env":
        env["THENA_API_KEY"] = KEY
    else:
        (tmp_path / "key").write_text(KEY + "\n")
        args += ["--api-key-file", tmp_path / "key"]
    if with_org:
        env["THENA_ORG_ID"] = ORG
    result = invoke(*args, *FAST_UNPACED, env=env)

    assert result.exit_code == 0, result.stderr
    assert len(server.requests) == 4
    for request in server.requests:
        assert request.header("x-api-key") == KEY
        assert request.header("authorization") is None
        assert request.header("x-org-id") == (ORG if with_org else None)
    assert {r["outcome"] for r in read_report(out)} == {"linked"}
    no_secret_anywhere(KEY, result.stdout, result.stderr, files=(out, log, summary))


def test_rejected_api_key_is_never_shown(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    server = start_sandbox(api_key=KEY)
    wrong = "k-WRONG-9876543210"
    src = pairs_csv(tmp_path / "in.csv", 5)
    out = tmp_path / "out.csv"
    result = invoke(
        "run", src, "-o", out, *FAST_UNPACED,
        env={"THENA_BASE_URL": server.url, "THENA_API_KEY": wrong},
    )  # fmt: skip
    assert result.exit_code == 3, result.stderr
    assert server.requests and all(r.status == 401 for r in server.requests)
    assert all(r.header("authorization") is None for r in server.requests)
    assert {r["outcome"] for r in read_report(out)} <= {"failed", "skipped"}
    no_secret_anywhere(wrong, result.stdout, result.stderr, files=(out,))


@pytest.mark.parametrize("key_via", ["flag", "env", "file"])
@pytest.mark.parametrize("token_via", ["flag", "env", "file"])
def test_token_and_api_key_together_is_a_usage_error(
    sandbox: Sandbox, tmp_path: Path, token_via: str, key_via: str
) -> None:
    src = pairs_csv(tmp_path / "in.csv", 3)
    env = {"THENA_BASE_URL": sandbox.url, "THENA_ORG_ID": ORG}
    args: list[str | Path] = ["run", src, *FAST_UNPACED]
    for via, value, flag, var in (
        (token_via, TOKEN, "--token", "THENA_TOKEN"),
        (key_via, KEY, "--api-key", "THENA_API_KEY"),
    ):
        if via == "flag":
            args += [flag, value]
        elif via == "env":
            env[var] = value
        else:
            path = tmp_path / var.lower()
            path.write_text(value)
            args += [f"{flag}-file", path]
    result = invoke(*args, env=env)

    assert result.exit_code == 2, result.stderr
    assert result.stderr.strip(), "a usage error says what is wrong"
    assert sandbox.requests == []
    assert not (tmp_path / "in.results.csv").exists()
    no_secret_anywhere(KEY, result.stdout, result.stderr)
    no_secret_anywhere(TOKEN, result.stdout, result.stderr)


# -- where credentials come from: flags, environment, files -----------------------------------


def test_token_file_overrides_an_exported_token(tmp_path: Path, sandbox: Sandbox) -> None:
    data = pairs_csv(tmp_path / "in.csv", 3)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    env = {"THENA_TOKEN": "stale-token-from-profile", "THENA_ORG_ID": ORG,
           "THENA_BASE_URL": sandbox.url}  # fmt: skip
    result = invoke("run", data, "--token-file", token_file, "--rate", "0", *FAST, env=env)
    assert result.exit_code == 0, result.stderr
    assert {r.header("authorization") for r in sandbox.requests} == {f"Bearer {TOKEN}"}


@pytest.mark.parametrize(
    ("flag", "content", "said", "unsaid"),
    [
        pytest.param(
            "--api-key-file", "some-api-key", ["THENA_TOKEN", "--api-key-file"], [],
            id="an-exported-token-and-an-api-key-file-name-their-sources",
        ),
        pytest.param(
            "--token-file", "tok\ren-123", ["control character"], ["Traceback", "tok\ren-123"],
            id="a-credential-with-a-control-character",
        ),
    ],
)  # fmt: skip
def test_a_credential_file_that_cannot_be_used_is_refused_up_front(
    tmp_path: Path, sandbox: Sandbox, flag: str, content: str, said: list[str], unsaid: list[str]
) -> None:
    data = pairs_csv(tmp_path / "in.csv", 3)
    credential = tmp_path / "credential"
    credential.write_text(content)
    result = run_against(sandbox, "run", data, flag, credential, *FAST)
    assert result.exit_code == 2
    assert all(text in result.stderr for text in said), result.stderr
    assert not [text for text in unsaid if text in result.stderr], result.stderr
    assert sandbox.requests == []


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"\xef\xbb\xbf" + TOKEN.encode() + b"\r\n", id="utf8-bom-crlf"),
        pytest.param(TOKEN.encode("utf-16"), id="utf16-bom"),
        pytest.param(TOKEN.encode("utf-32"), id="utf32-bom"),
        pytest.param(b"\n  \t" + TOKEN.encode() + b"  \n\n", id="whitespace"),
        pytest.param(b"\xef\xbb\xbf\xc2\xa0" + TOKEN.encode() + b"\xc2\xa0", id="bom-nbsp"),
    ],
)
def test_a_token_file_as_editors_save_it_works(
    sandbox: Sandbox, tmp_path: Path, content: bytes
) -> None:
    token_file = tmp_path / "token"
    token_file.write_bytes(content)
    token_file.chmod(0o600)
    inp = pairs_csv(tmp_path / "in.csv", 2)
    result = invoke(
        "run", inp, "--token-file", token_file, *FAST,
        env={"THENA_ORG_ID": ORG, "THENA_BASE_URL": sandbox.url},
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert {r.header("authorization") for r in sandbox.requests} == {f"Bearer {TOKEN}"}


@pytest.mark.parametrize(
    ("option", "content", "message"),
    [
        ("--token-file", f"Bearer {TOKEN}\n", 'holds "Bearer ..."; put only the token in the file'),
        ("--token-file", f"bearer\t{TOKEN}", 'holds "Bearer ..."'),
        ("--token-file", f"Authorization: Bearer {TOKEN}", 'holds "Bearer ..."'),
        ("--api-key-file", f"x-api-key: {TOKEN}", "holds a header line (x-api-key: ...)"),
        ("--token-file", f"{TOKEN}\u200b", "U+200B"),
        ("--token-file", f"tok {TOKEN}", "a space"),
        ("--token-file", f"{TOKEN}\nsecond-line", "control character"),
    ],
)  # fmt: skip
def test_a_token_file_holding_more_than_the_token_is_refused(
    sandbox: Sandbox, tmp_path: Path, option: str, content: str, message: str
) -> None:
    path = tmp_path / "cred"
    path.write_text(content, encoding="utf-8")
    result = invoke(
        "run", pairs_csv(tmp_path / "in.csv", 2), option, path, *FAST,
        env={"THENA_ORG_ID": ORG, "THENA_BASE_URL": sandbox.url},
    )  # fmt: skip
    assert result.exit_code == 2
    assert message in result.stderr and str(path) in result.stderr
    assert result.stderr.count("\n") == 1 and TOKEN not in result.stderr
    assert sandbox.requests == []


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"THENA_TOKEN": f"Bearer {TOKEN}"}, 'THENA_TOKEN holds "Bearer ..."; set it to the token'),
        ({"THENA_API_KEY": f"Bearer {TOKEN}"}, 'THENA_API_KEY holds "Bearer ..."'),
    ],
)  # fmt: skip
def test_a_variable_holding_bearer_is_refused(
    sandbox: Sandbox, tmp_path: Path, env: dict[str, str], message: str
) -> None:
    full = {"THENA_ORG_ID": ORG, "THENA_BASE_URL": sandbox.url, **env}
    result = invoke("run", pairs_csv(tmp_path / "in.csv", 2), *FAST, env=full)
    assert result.exit_code == 2
    assert message in result.stderr and TOKEN not in result.stderr
    assert sandbox.requests == []


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param(b"tok\xff\xfeen-123", "is not UTF-8 text", id="latin1-bytes"),
        pytest.param(b"\xc3(" + TOKEN.encode(), "is not UTF-8 text", id="broken-sequence"),
        pytest.param(b"\xff\xfe" + b"\x00\xd8", "is not UTF-16-LE text", id="utf16-lone-surrogate"),
        pytest.param(b"", "is empty", id="empty"),
        pytest.param(b"\xef\xbb\xbf \r\n", "is empty", id="only-bom"),
        pytest.param(b"x" * 70_000, "larger than 64 KB", id="huge"),
    ],
)  # fmt: skip
def test_an_unusable_token_file_is_one_line_and_exit_2(
    sandbox: Sandbox, tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "token"
    path.write_bytes(content)
    result = invoke(
        "run", pairs_csv(tmp_path / "in.csv", 2), "--token-file", path, *FAST,
        env={"THENA_ORG_ID": ORG, "THENA_BASE_URL": sandbox.url},
    )  # fmt: skip
    assert result.exit_code == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.startswith("bulklink: error: ") and result.stderr.count("\n") == 1
    assert sandbox.requests == []


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
@pytest.mark.parametrize(
    ("mode", "warned"),
    [(0o600, ""), (0o400, ""), (0o640, "readable"), (0o604, "readable"), (0o620, "writable")],
)
def test_a_credential_file_others_can_read_gives_a_warning(
    tmp_path: Path, mode: int, warned: str
) -> None:
    for option in ("--token-file", "--api-key-file"):
        path = tmp_path / option.strip("-")
        path.write_text(TOKEN)
        path.chmod(mode)
        if option == "--token-file":
            auth = resolve_auth(ConnectionOptions(token_file=path, org_id=ORG))
        else:
            auth = resolve_auth(ConnectionOptions(api_key_file=path))
        if warned:
            assert auth.warnings == (
                f"warning: {option} {path} is {warned} by others; chmod 600 it",
            )
        else:
            assert auth.warnings == ()
        assert all(TOKEN not in w for w in auth.warnings)
        path.chmod(stat.S_IRUSR | stat.S_IWUSR)


def test_help_prefers_environment_token_and_offers_token_file() -> None:
    result = invoke("run", "--help")
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    assert "THENA_TOKEN" in text and "--token-file" in text
    assert "process list" in text


# -- JWT preflight ----------------------------------------------------------------------------


def stamps(text: str) -> list[datetime]:
    """Every ``YYYY-MM-DD HH:MM:SS`` (or ``T``-separated) time in text, read as UTC."""
    found = re.findall(r"(\d{4}-\d{2}-\d{2})[ T](\d{2}:\d{2}:\d{2})", text)
    return [datetime.fromisoformat(f"{d}T{t}+00:00") for d, t in found]


def said(stderr: str, tmp_path: Path) -> str:
    """stderr without the test's directory (whose name holds words like 'warning')."""
    return stderr.replace(str(tmp_path), "<tmp>").lower()


def test_expired_jwt_stops_before_sending(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    exp = int(time.time()) - 3 * 3600
    jwt = make_jwt(exp=exp)
    server = start_sandbox(token=jwt)
    src = pairs_csv(tmp_path / "in.csv", 5)
    result = run_against(server, "run", src, *FAST_UNPACED, env={"THENA_TOKEN": jwt})

    assert result.exit_code == 2, result.stderr
    assert "expire" in said(result.stderr, tmp_path)
    when = datetime.fromtimestamp(exp, UTC)
    assert when in stamps(result.stderr), result.stderr
    assert re.search(r"UTC|\d{2}Z\b|\+00:?00", result.stderr), "the time is said to be UTC"
    assert server.requests == []
    assert not (tmp_path / "in.results.csv").exists()
    assert jwt not in result.stderr


@pytest.mark.parametrize(("rows", "limit"), [(1, None), (100, 1)])
def test_jwt_expiring_before_the_estimated_end_warns_and_runs(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path, rows: int, limit: int | None
) -> None:
    now = time.time()
    exp = int(now) + 5
    jwt = make_jwt(exp=exp)
    server = start_sandbox(token=jwt)
    src = pairs_csv(tmp_path / "in.csv", rows)
    extra = ["--limit", str(limit)] if limit is not None else []
    # One row to send at 0.1 rows/s: estimated to need 10 s, past the token's exp.
    result = run_against(
        server, "run", src, "--rate", "0.1", "--no-progress", *extra, env={"THENA_TOKEN": jwt}
    )

    assert result.exit_code == (0 if limit is None else 1), result.stderr
    warning = [line for line in said(result.stderr, tmp_path).splitlines() if "expire" in line]
    assert len(warning) == 1, result.stderr
    times = stamps(warning[0])
    exp_at = datetime.fromtimestamp(exp, UTC)
    assert exp_at in times, warning[0]
    assert any(t > exp_at for t in times), f"the estimated end is shown too: {warning[0]}"
    assert len(server.requests) == 1
    assert server.requests[0].header("authorization") == f"Bearer {jwt}"
    assert read_report(tmp_path / "in.results.csv")[0]["outcome"] == "linked"
    assert jwt not in result.stderr


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(make_jwt(exp=int(time.time()) + 30 * 86400), id="jwt-far-future"),
        pytest.param(make_jwt(), id="jwt-without-exp"),
        pytest.param(TOKEN, id="opaque"),
        pytest.param("not.a.jwt", id="dotted-opaque"),
    ],
)
def test_no_warning_for_a_good_jwt_or_a_non_jwt(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path, token: str
) -> None:
    server = start_sandbox(token=token)
    src = pairs_csv(tmp_path / "in.csv", 1)
    result = run_against(
        server, "run", src, "--rate", "0.1", "--no-progress", env={"THENA_TOKEN": token}
    )
    assert result.exit_code == 0, result.stderr
    assert "warning" not in said(result.stderr, tmp_path)
    assert "expire" not in said(result.stderr, tmp_path)
    assert [r.header("authorization") for r in server.requests] == [f"Bearer {token}"]


def test_jwt_estimate_counts_only_the_rows_limit_lets_through(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    """100 rows at 0.5/s would need 200 s, but --limit 1 sends one row: no warning."""
    jwt = make_jwt(exp=int(time.time()) + 60)
    server = start_sandbox(token=jwt)
    src = pairs_csv(tmp_path / "in.csv", 100)
    result = run_against(
        server, "run", src, "--rate", "0.5", "--limit", "1", "--no-progress",
        env={"THENA_TOKEN": jwt},
    )  # fmt: skip
    assert result.exit_code == 1, result.stderr
    assert "expire" not in said(result.stderr, tmp_path)
    assert len(server.requests) == 1


# -- secrets never reach any output -----------------------------------------------------------


def test_token_never_printed(
    start_sandbox: Callable[..., Sandbox], sandbox: Sandbox, tmp_path: Path
) -> None:
    path = write_csv(
        tmp_path / "pairs.csv", [HEAD, ["A", "B"], ["MISSING1", "C"], ["", "D"], ["A", "B"]]
    )
    outputs = []
    # a normal run with some failures, the token from the environment
    result = run(sandbox, path)
    assert result.exit_code == 1, result.output
    outputs.append(result)
    # the token on the command line, with a run, a dry run and an input error
    flags = ("--token", TOKEN, "--org-id", ORG, "--base-url", sandbox.url, "--rate", "0")
    result = invoke("run", path, *flags, "-o", tmp_path / "b.csv")
    assert result.exit_code == 1, result.output
    outputs.append(result)
    result = invoke("run", path, *flags, "--dry-run")
    assert result.exit_code == 0, result.output
    outputs.append(result)
    result = invoke("run", tmp_path / "absent.csv", *flags)
    assert result.exit_code == 2, result.output
    outputs.append(result)
    # credentials rejected: a server expecting another token
    strict = start_sandbox(token="tok-OTHER-999")
    result = run(strict, path)
    assert result.exit_code == 3, result.output
    outputs.append(result)
    for result in outputs:
        assert TOKEN not in result.stdout
        assert TOKEN not in result.stderr
        assert "SECRET" not in result.output


def file_text(path: Path) -> bytes:
    if path.suffix == ".xlsx":
        with zipfile.ZipFile(path) as zf:
            return b"".join(zf.read(name) for name in zf.namelist())
    return path.read_bytes()


def leaks(streams: dict[str, str], files: list[Path]) -> list[str]:
    """Names of the streams and files that hold the token."""
    found = [name for name, text in streams.items() if TOKEN in text]
    found += [p.name for p in files if p.exists() and TOKEN.encode() in file_text(p)]
    return found


@pytest.mark.parametrize("fmt", [".csv", ".xlsx", ".jsonl"])
def test_token_absent_from_everything_in_failing_runs(
    tmp_path: Path, start_sandbox: Callable[..., Sandbox], fmt: str
) -> None:
    echo = f"Bearer {TOKEN}"
    script = {
        "E0003": [Reply(404, {"statusCode": 404, "message": f"not found for {echo}"})],
        "E0004": [Reply(503, f"upstream refused {echo}")] * 10,
        "E0005": [Reply(400, {"statusCode": 400, "message": [f"bad auth header {echo}"]})],
    }
    server = start_sandbox(script=script)
    rows = [["sourceTicketId", "linkedTicketId"], ["T0001", "L1"], ["MISSING2", "L2"]]
    rows += [["E0003", "L3"], ["E0004", "L4"], ["E0005", "L5"], ["T0006", "L6"]]
    src = write_csv(tmp_path / "in.csv", rows)
    log, summary = tmp_path / "run.log", tmp_path / "summary.json"
    report = tmp_path / f"a{fmt}"
    # Each run below sends the same pairs again: no state store.
    common: tuple[str | Path, ...] = ("--log-file", log, "--summary-json", summary)
    common += ("--max-retries", "1", "--no-state", *FAST)

    failing = run_against(server, "run", src, "-o", report, *common)
    assert failing.exit_code == 1, failing.stderr
    assert "404" in failing.stderr and "503" in failing.stderr
    found = {
        "404/503 run": leaks(
            {"stdout": failing.stdout, "stderr": failing.stderr},
            [report, journal_of(report), lock_of(report), log, summary],
        )
    }

    # 401 whose body echoes the token: the run stops with exit 3, journal kept.
    server.config.script["T0001"] = [
        Reply(401, {"statusCode": 401, "message": f"Invalid token {TOKEN}"})
    ]
    report_b = tmp_path / f"b{fmt}"
    rejected = run_against(server, "run", src, "-o", report_b, *common)
    assert rejected.exit_code == 3, rejected.stderr
    assert report_b.exists() and journal_of(report_b).exists()
    found["401 run"] = leaks(
        {"stdout": rejected.stdout, "stderr": rejected.stderr},
        [report_b, journal_of(report_b), lock_of(report_b), log, summary],
    )

    # A wrong token (the server expects another one), given in a file.
    other = start_sandbox(token="someone-elses-token")
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    report_c = tmp_path / f"c{fmt}"
    wrong = invoke(
        "run", src, "-o", report_c, "--token-file", token_file, *common,
        env={"THENA_ORG_ID": ORG, "THENA_BASE_URL": other.url},
    )  # fmt: skip
    assert wrong.exit_code == 3, wrong.stderr
    assert {r["outcome"] for r in read_report(report_c)} <= {"skipped", "failed"}
    assert json.loads(summary.read_text())["exit_code"] == 3
    found["wrong token"] = leaks(
        {"stdout": wrong.stdout, "stderr": wrong.stderr},
        [report_c, journal_of(report_c), lock_of(report_c), log, summary],
    )
    assert found == {"404/503 run": [], "401 run": [], "wrong token": []}


def _json_literal(text: str) -> str:
    return json.dumps(text)[1:-1]


def _every_byte(text: str) -> str:
    return "".join(f"%{byte:02X}" for byte in text.encode())


def _u_escapes(text: str) -> str:
    return "".join(f"\\u{ord(c):04x}" for c in text)


ECHOES: dict[str, tuple[str, str]] = {
    # name: (the text a JSON decoder yields, how the server spells it in the JSON string)
    "json-escaped": (ODD_TOKEN, _json_literal(ODD_TOKEN)),
    "all-unicode-escapes": (ODD_TOKEN, _u_escapes(ODD_TOKEN)),
    "slash-escaped": (ODD_TOKEN, _json_literal(ODD_TOKEN).replace("/", "\\/")),
    "url-encoded": (quote(ODD_TOKEN, safe=""), quote(ODD_TOKEN, safe="")),
    "url-encoded-plus": (quote_plus(ODD_TOKEN), quote_plus(ODD_TOKEN)),
    "url-lower-hex": (
        (low := re.sub("%[0-9A-F]{2}", lambda m: m.group().lower(), quote(ODD_TOKEN, safe=""))),
        low,
    ),
    "base64": (base64.b64encode(ODD_TOKEN.encode()).decode(),) * 2,
    "html": (html.escape(ODD_TOKEN), _json_literal(html.escape(ODD_TOKEN))),
    # Every byte percent-encoded, as encoders of binary data spell it, in either case,
    # and that encoded again; a mix of raw, percent and \u escapes; \u escapes in a
    # page that is no JSON (the decoder never sees them).
    "every-byte-percent": (_every_byte(ODD_TOKEN),) * 2,
    "every-byte-percent-lower": (_every_byte(ODD_TOKEN).lower(),) * 2,
    "percent-twice": (quote(_every_byte(ODD_TOKEN), safe=""),) * 2,
    "mixed-escapes": (
        ODD_TOKEN[:3] + _every_byte(ODD_TOKEN[3:9]) + ODD_TOKEN[9:],
        ODD_TOKEN[:3] + _every_byte(ODD_TOKEN[3:9]) + _u_escapes(ODD_TOKEN[9:]),
    ),
    "unicode-escapes-as-text": (_u_escapes(ODD_TOKEN), _json_literal(_u_escapes(ODD_TOKEN))),
    # Every character an HTML numeric reference; the Authorization header's whole value
    # base64-encoded, as a debugging proxy may echo it.
    "html-numeric": ("".join(f"&#x{ord(c):x};" for c in ODD_TOKEN),) * 2,
    # JSON's short escapes in a page that is no JSON (PHP's json_encode writes \/).
    "json-slash-as-text": ((shown := _json_literal(ODD_TOKEN).replace("/", "\\/")),) * 2,
    "base64-of-the-header": (base64.b64encode(f"Bearer {ODD_TOKEN}".encode()).decode(),) * 2,
    # A gateway's or a logger's hex dump of the header, in either case.
    "hex": (ODD_TOKEN.encode().hex(),) * 2,
    "hex-upper": (ODD_TOKEN.encode().hex().upper(),) * 2,
}


@pytest.mark.parametrize("fmt", [".csv", ".jsonl"])
@pytest.mark.parametrize("echo", list(ECHOES))
def test_an_echoed_token_never_reaches_any_output(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path, echo: str, fmt: str
) -> None:
    decoded, spelled = ECHOES[echo]
    failure = f'{{"statusCode":404,"message":"no access for {spelled}","error":"Not Found"}}'
    success = f'{{"status":true,"message":"ok","data":{{"id":"X","title":"hi {spelled}"}}}}'
    text = f"<html><body>bad token {html.escape(ODD_TOKEN)} {decoded}</body></html>"
    script = {
        "T00001": [Reply(404, failure.encode())],
        "T00002": [Reply(200, success.encode())],
        "T00003": [Reply(400, text)],
    }
    server = start_sandbox(token=ODD_TOKEN, script=script)
    out, log, summary = tmp_path / f"out{fmt}", tmp_path / "run.log", tmp_path / "summary.json"
    result = run_against(
        server, "run", pairs_csv(tmp_path / "in.csv", 4), "-o", out, "--rate", "0",
        "--log-file", log, "--summary-json", summary, *FAST, env={"THENA_TOKEN": ODD_TOKEN},
    )  # fmt: skip
    assert result.exit_code == 1, result.stderr
    assert "no access for ***" in result.stderr
    outputs = {
        "stdout": result.stdout,
        "stderr": result.stderr,
        "report": out.read_text(encoding="utf-8"),
        "log": log.read_text(encoding="utf-8"),
        "summary": summary.read_text(encoding="utf-8"),
    }
    needles = {ODD_TOKEN, decoded, _json_literal(ODD_TOKEN), _json_literal(decoded)}
    leaks = [(name, n) for name, t in outputs.items() for n in needles if n in t]
    assert leaks == []
    if fmt == ".csv":
        rows = read_report(out)
        assert rows[1]["outcome"] == "linked" and rows[1]["ticket.title"] == "hi ***"
        assert rows[0]["error"] == "HTTP 404 no access for ***"


CUT_ECHOES = {
    # A debug header echoing the request's Authorization, past aiohttp's 8190-byte
    # limit: its error quotes the line's start, which bulklink cuts to 120 characters.
    "long header": Reply(500, headers={"X-Echo": "A" * 70 + TOKEN + "B" * 9000}),
    # A Location whose query holds the token past the 300 characters a redirect shows.
    "long redirect": Reply(307, headers={"Location": f"http://evil.example/{'a' * 265}?t={TOKEN}"}),
    # A page that is no JSON, the token (every byte percent-encoded) where its excerpt
    # (200 characters) is cut.
    "long page": Reply(400, "x" * 190 + " " + _every_byte(TOKEN) + " " + "y" * 500),
}


@pytest.mark.parametrize("echo", list(CUT_ECHOES))
def test_a_token_cut_short_with_what_the_server_said_shows_no_part_of_it(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path, echo: str
) -> None:
    """What the server said is redacted before it is cut to a readable length: a secret
    cut in two is in no spelling the redactor knows."""
    server = start_sandbox(script={"T00001": [CUT_ECHOES[echo]]})
    out, log, summary = tmp_path / "out.csv", tmp_path / "run.log", tmp_path / "summary.json"
    result = run_against(
        server, "run", pairs_csv(tmp_path / "in.csv", 2), "-o", out, "--rate", "0",
        "--max-retries", "0", "--log-file", log, "--summary-json", summary, *FAST,
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    texts = [result.output, out.read_text(), log.read_text(), summary.read_text()]
    if journal_of(out).exists():
        texts.append(journal_of(out).read_text())
    assert read_report(out)[0]["outcome"] == "failed"
    assert "***" in read_report(out)[0]["error"]
    assert [t for t in texts if TOKEN[:8] in t or _every_byte(TOKEN)[:12] in t] == []


LONG_TOKEN = "sk_live_" + "nd0wgrsjLYIy4uVoV2ySsQIRmMha0ZnFYTsSMDl9mb8uAq8WdBMwlJ" * 3


def test_a_long_token_cut_short_by_the_http_library_shows_no_part_of_it(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    """aiohttp quotes only a too-long header's first 100 bytes: what is left of a long
    token (a JWT, an opaque key) there was in no spelling the redactor knew."""
    echo = Reply(500, headers={"X-Echo": "Bearer " + LONG_TOKEN + "B" * 9000})
    server = start_sandbox(token=LONG_TOKEN, script={"T00001": [echo]})
    out, summary = tmp_path / "out.csv", tmp_path / "summary.json"
    result = run_against(
        server, "run", pairs_csv(tmp_path / "in.csv", 2), "-o", out, "--rate", "0",
        "--max-retries", "0", "--summary-json", summary, *FAST,
        env={"THENA_TOKEN": LONG_TOKEN},
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert read_report(out)[0]["error"].startswith("malformed answer: ")
    assert "Bearer ***" in read_report(out)[0]["error"]
    for text in (result.output, out.read_text(), summary.read_text()):
        assert LONG_TOKEN[:16] not in text and LONG_TOKEN[20:40] not in text


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32"])
def test_a_token_echoed_in_an_answer_in_utf16_or_utf32_is_masked(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path, encoding: str
) -> None:
    """The redactor looked for the UTF-8 bytes of the token only, while the parser reads
    JSON in UTF-16 and UTF-32 too: the report's ticket held it, and an error page's
    message spelt it with NULs between its letters."""
    json_type = {"Content-Type": f"application/json; charset={encoding}"}
    page_type = {"Content-Type": f"text/html; charset={encoding}"}
    ticket = {"status": True, "data": {"id": "X", "title": f"req by {TOKEN}"}}
    page = f"<html><body>Bad gateway: Authorization: Bearer {TOKEN}</body></html>"
    script = {
        "T00001": [Reply(200, json.dumps(ticket).encode(encoding), json_type)],
        "T00002": [Reply(502, page.encode(encoding), page_type)],
    }
    server = start_sandbox(script=script)
    out, summary = tmp_path / "out.csv", tmp_path / "summary.json"
    result = run_against(
        server, "run", pairs_csv(tmp_path / "in.csv", 3), "-o", out, "--rate", "0",
        "--max-retries", "0", "--summary-json", summary, *FAST,
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    rows = read_report(out)
    assert (rows[0]["outcome"], rows[0]["ticket.title"]) == ("linked", "req by ***")
    assert (
        rows[1]["error"]
        == "HTTP 502 Bad gateway: Authorization: Bearer *** (gave up after 1 attempts)"
    )
    spellings = [TOKEN.encode(), TOKEN.encode("utf-16-le"), TOKEN.encode("utf-16-be")]
    for data in (result.output.encode(), out.read_bytes(), summary.read_bytes()):
        assert [s for s in spellings if s in data] == []


def test_a_json_answer_in_the_charset_it_declares_is_read(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    """A gateway transcoding to Latin-1, saying so: the pair was linked, but the answer
    was taken for no JSON and the row reported failed every night."""
    body = json.dumps({"status": True, "data": {"id": "X", "title": "café"}}, ensure_ascii=False)
    latin = {"Content-Type": "application/json; charset=iso-8859-1"}
    server = start_sandbox(script={"T00001": [Reply(200, body.encode("latin-1"), latin)]})
    out = tmp_path / "out.csv"
    result = run_against(server, "run", pairs_csv(tmp_path / "in.csv", 1), "-o", out, *FAST)
    assert result.exit_code == 0, result.output
    assert read_report(out)[0]["ticket.title"] == "café"


def test_a_token_echoed_in_an_unknown_content_encoding_is_masked(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    """The encoding was quoted lower-cased: a token spelt otherwise in no case at all."""
    echo = Reply(200, b"{}", {"Content-Encoding": f"br; {TOKEN}"})
    server = start_sandbox(script={"T00001": [echo]})
    out = tmp_path / "out.csv"
    result = run_against(server, "run", pairs_csv(tmp_path / "in.csv", 1), "-o", out, *FAST)
    assert result.exit_code == 1, result.output
    assert (
        read_report(out)[0]["error"]
        == "HTTP 200 answer encoded as 'br; ***', which bulklink did not ask for"
    )
    assert TOKEN.lower() not in result.output and TOKEN.lower() not in out.read_text()


def test_every_spelling_of_a_secret_is_redacted() -> None:
    auth = resolve_auth(ConnectionOptions(token=ODD_TOKEN, org_id=ORG))
    for form in secret_forms(ODD_TOKEN):
        assert auth.redact(f"a {form} b") == "a *** b", form
    assert auth.redact("ordinary words") == "ordinary words"


def test_a_token_file_others_can_read_is_warned_about_even_when_quiet(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o644)
    src = pairs_csv(tmp_path / "in.csv", 2)
    env = {"THENA_ORG_ID": ORG, "THENA_BASE_URL": sandbox.url}
    result = invoke("run", src, "--token-file", token_file, "-q", "--no-progress", env=env)
    assert result.exit_code == 0, result.stderr
    assert "readable by others" in result.stderr and "chmod 600" in result.stderr
    assert TOKEN not in result.stderr
    token_file.chmod(0o600)
    quiet = invoke("run", src, "--token-file", token_file, "-q", "--no-state", env=env)
    assert quiet.exit_code == 0 and quiet.stderr == "", quiet.stderr


@pytest.mark.parametrize(
    ("where", "org"), [("env", "org_1\norg_2"), ("option", "org\x01x"), ("env", "org\x7f")]
)
def test_an_org_id_no_header_can_hold_is_one_line_and_nothing_sent(
    sandbox: Sandbox, tmp_path: Path, where: str, org: str
) -> None:
    """It ended the run exit 70, 'a bug in bulklink', every row skipped, every night."""
    src = pairs_csv(tmp_path / "in.csv", 2)
    if where == "env":
        result = run_against(sandbox, "run", src, *FAST, env={"THENA_ORG_ID": org})
        origin = "THENA_ORG_ID"
    else:
        result = run_against(sandbox, "run", src, "--org-id", org, *FAST)
        origin = "--org-id"
    line = one_line_usage_error(result)
    assert f"the organization ID from {origin} contains a control character" in line
    assert sandbox.requests == []
    assert not (tmp_path / "in.results.csv").exists()


def test_a_token_file_that_is_a_pipe_no_one_writes_to_is_refused_not_waited_for(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """Opening it waited for a writer for ever: no output, no deadline, a hung cron job."""
    fifo = tmp_path / "token"
    os.mkfifo(fifo)
    src = pairs_csv(tmp_path / "in.csv", 1)
    env = {"THENA_ORG_ID": ORG, "THENA_BASE_URL": sandbox.url}
    result = invoke("run", src, "--token-file", fifo, "--deadline", "5s", *FAST, env=env)
    line = one_line_usage_error(result)
    assert line.endswith(f"--token-file {fifo} is a named pipe that nothing wrote a credential to")
    assert sandbox.requests == []


def test_another_jwt_in_an_answer_is_not_taken_for_the_tokens_remains(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    """Every JWT of one algorithm starts alike (its header, then its claims): a ticket
    field holding another one came out as ``***hbGci...``."""
    import time

    token = make_jwt(exp=int(time.time()) + 3600, org="acme") + "AAAAAAAAAAAAAAAA"
    other = make_jwt(exp=1, org="other").rsplit(".", 1)[0] + ".c2lnbmF0dXJlLW9mLWFub3RoZXI"
    header = other.split(".")[0]
    ticket = {"status": True, "data": {"id": "X", "title": other, "description": header}}
    server = start_sandbox(token=token, script={"T00001": [Reply(200, ticket)]})
    out = tmp_path / "out.csv"
    result = run_against(
        server, "run", pairs_csv(tmp_path / "in.csv", 1), "-o", out, *FAST,
        env={"THENA_TOKEN": token},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    row = read_report(out)[0]
    assert (row["ticket.title"], row["ticket.description"]) == (other, header)
