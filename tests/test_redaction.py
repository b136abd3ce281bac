"""The one redactor, URL check and text formats: every secret in every spelling, one
spelling of each time and duration. Unit tests; the end-to-end leak hunts are in
test_notify.py, test_monitoring.py and test_credentials.py."""

from __future__ import annotations

import base64
import json
import re
from datetime import UTC, datetime, timedelta, timezone
from urllib.parse import quote

import pytest
import yarl

from bulklink.errors import UsageError
from bulklink.models import ErrorTally
from bulklink.redaction import Redactor
from bulklink.text import escape_controls, format_duration, parse_stamp, utc_stamp
from bulklink.urls import check_url, normalise_url

SIG = "Zq8-Rk~Tx4wLm9PsVb2Hc7Nd"
POWER_AUTOMATE = (
    "https://prod-27.westeurope.logic.azure.com:443/workflows/6f1c2a9e4b7d4e0f8a3b5c6d7e8f9a0b"
    "/triggers/manual/paths/invoke?api-version=2016-06-01"
    f"&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig={SIG.replace('~', '%7E').replace('Z', '%5A')}"
)
SLACK = "https://hooks.slack.com/services/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"
TEAMS = (
    "https://contoso.webhook.office.com/webhookb2/7f6e5d4c-3b2a-1908-f7e6-d5c4b3a29180@"
    "0a1b2c3d-4e5f-6789-abcd-ef0123456789/IncomingWebhook/9f8e7d6c5b4a39281706f5e4d3c2b1a0"
    "/1b2c3d4e-5f60-7182-93a4-b5c6d7e8f901"
)


def spellings(url: str) -> list[str]:
    """How a webhook URL comes back in text: as written, as aiohttp (yarl) re-spells it
    (``%2F`` to ``/``, ``%7E`` to ``~``, ``%5A`` to ``Z``, default port dropped), its
    path and query alone, in JSON."""
    respelled = yarl.URL(url)
    forms = [url, str(respelled), respelled.path_qs, respelled.raw_path_qs, json.dumps(url)]
    forms.append(json.dumps(str(respelled))[1:-1])  # JSON writes "/" as "\/" only if asked
    return forms


@pytest.mark.parametrize("url", [POWER_AUTOMATE, SLACK, TEAMS])
def test_a_webhook_url_is_redacted_in_every_spelling(url: str) -> None:
    redact = Redactor(urls=[url])
    host = yarl.URL(url).host
    assert host is not None
    for form in spellings(url):
        text = redact(f"error talking to {form}: 502")
        assert text.startswith("error talking to ") and text.endswith(": 502")
        key_parts = [p for p in yarl.URL(url).path.split("/") if len(p) >= 16]
        for secret in [*key_parts, *yarl.URL(url).query.values()]:
            if len(secret) >= 8:
                assert secret not in text, (form, text)


def test_a_power_automate_sig_is_redacted_alone_and_re_encoded() -> None:
    redact = Redactor(urls=[POWER_AUTOMATE])
    for form in (SIG, quote(SIG, safe=""), json.dumps(SIG)):
        assert SIG not in redact(f"bad signature {form}")
        assert "***" in redact(f"bad signature {form}")
    # the plain words of the URL stay readable
    assert redact("the manual trigger of workflows") == "the manual trigger of workflows"


def test_credentials_in_json_escapes_base64_and_percent_forms() -> None:
    token = "eyJ0eXAi.tok/en+with=odd&chars"
    redact = Redactor([token])
    encoded = json.dumps(token)[1:-1]
    lower_hex = re.sub("%[0-9A-F]{2}", lambda m: m.group().lower(), quote(token, safe=""))
    for text in (token, encoded, quote(token, safe=""), lower_hex):
        assert redact(f"[{text}]") == "[***]"
    body = json.dumps({"message": "\\u0065" + token[1:], "t": token}).encode()
    escaped = body.replace(b"eyJ0", b"\\u0065yJ0")
    assert token.encode() not in redact.body(escaped)
    assert b"eyJ0" not in redact.body(escaped)


def test_redactors_combine_and_walk_json_values() -> None:
    both = Redactor(["secret-token-1"]) | Redactor(urls=[SLACK])
    value = {"k secret-token-1": ["x", {"n": SLACK}], "lone": "\ud800"}
    clean = both.value(value)
    assert "secret-token-1" not in json.dumps(clean)
    assert "aB3dE5gH7jK9mN1pQ3sT5vW7" not in json.dumps(clean)
    assert clean["lone"] == "\ufffd"


def test_short_secrets_are_not_redacted_so_words_survive() -> None:
    assert Redactor(["abc"])("abc abc") == "abc abc"


def test_a_base_url_is_named_in_its_refusal_and_loses_its_slash() -> None:
    with pytest.raises(UsageError, match=re.escape("http://10.0.0.9 must use https://")):
        check_url("http://10.0.0.9/", what="--base-url")
    with pytest.raises(UsageError, match="must not have a query"):
        check_url("https://x.example/?a=1", what="--base-url")
    assert check_url("http://127.0.0.1:8080/", what="--base-url") == "http://127.0.0.1:8080"


def test_one_spelling_per_server() -> None:
    assert normalise_url("HTTPS://Platform.Thena.AI:443/") == "https://platform.thena.ai"
    assert normalise_url("sandbox:") == "sandbox:"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (4.2, "4.2s"),
        (3, "3s"),
        (59.96, "60s"),
        (60, "1m"),
        (62, "1m02s"),
        (600, "10m"),
        (3600, "1h"),
        (7200, "2h"),
        (5400, "1h30m"),
        (3723, "1h02m03s"),
    ],
)
def test_one_duration_format(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_every_stamp_is_utc_with_z() -> None:
    when = datetime(2026, 12, 1, 3, 30, 5, tzinfo=timezone(timedelta(hours=2)))
    assert utc_stamp(when) == "2026-12-01T01:30:05Z"
    assert parse_stamp("2026-12-01T01:30:05Z") == when
    assert parse_stamp("2026-12-01T01:30:05+00:00") == when
    assert utc_stamp().endswith("Z") and parse_stamp(utc_stamp()).tzinfo is not None
    with pytest.raises(ValueError, match="aware"):
        utc_stamp(datetime(2026, 12, 1))
    assert parse_stamp("2026-12-01T01:30:05").tzinfo is UTC


def test_control_characters_are_shown_not_obeyed() -> None:
    assert escape_controls("a\x1b[2Jb\u202e\n") == "a\\x1b[2Jb\\u202e\\x0a"


@pytest.mark.parametrize(
    ("errors", "groups"),
    [
        # Boolean ID cells: one kind of error, one group; bulklink's words intact.
        (
            [
                ("sourceTicketId cell is a TRUE/FALSE value (TRUE), not text", "TRUE", "L1"),
                ("sourceTicketId cell is a TRUE/FALSE value (FALSE), not text", "FALSE", "L2"),
            ],
            {"sourceTicketId cell is a TRUE/FALSE value (<source>), not text": 2},
        ),
        # An ID that is a word of bulklink's message is no quote of the ID.
        ([("blank linked ticket ID", "ticket", "")], {"blank linked ticket ID": 1}),
        # A server's words after its status: the IDs folded, the status kept.
        (
            [
                ("HTTP 404 Ticket 404 not found", "404", "L1"),
                ("HTTP 404 Ticket T77 not found", "T77", "L2"),
            ],
            {"HTTP 404 Ticket <source> not found": 2},
        ),
    ],
)
def test_failures_group_by_their_words_with_only_quoted_ids_folded(
    errors: list[tuple[str, str, str]], groups: dict[str, int]
) -> None:
    tally = ErrorTally()
    for row, (error, source, linked) in enumerate(errors, 1):
        tally.add(row, error, source, linked)
    assert {g.error: g.count for g in tally.groups()} == groups


def test_a_base64_run_is_masked_whole_wherever_the_secret_sits_in_it() -> None:
    """Found by plain search and widened (a regular expression backtracked quadratically
    in a long run holding no secret: 6.5 s an answer for a 40,000-letter field)."""
    secret = "tokSECRETvalue/abc+xyz="
    redact = Redactor([secret])
    header = base64.b64encode(f"Bearer {secret}".encode()).decode()
    blob = "A" * 100_000
    assert redact(f"img {blob} end") == f"img {blob} end"
    assert redact(f"x {blob}{header}{blob} y") == "x *** y"
    assert redact.body(f'{{"d": "{header} and {header}"}}'.encode()) == b'{"d": "*** and ***"}'
