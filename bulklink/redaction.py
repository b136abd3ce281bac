"""The one redactor: every spelling of every secret bulklink holds, out of every text,
decoded JSON value and raw body before it is shown, logged, journaled or sent on.

The secrets are the credentials (token, API key; a proxy's user, password and
``user:password``, whose base64 is the ``Proxy-Authorization`` value) and the secret parts
of a webhook URL (its path and query: the URL is the key). Servers and libraries echo
them back re-spelled: JSON-escaped, percent-encoded either way (aiohttp's yarl turns
``%2F`` into ``/`` and ``%7E`` into ``~`` before a URL reaches an error message),
HTML-escaped, base64. Each
secret is expanded once into all those forms; redacting is then plain substring work.
"""

from __future__ import annotations

import base64
import contextlib
import html
import json
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar
from urllib.parse import parse_qsl, quote, quote_plus, unquote, urlsplit

import yarl

from bulklink.text import escape_name_bytes

MASK = "***"
MIN_SECRET = 4  # a shorter secret would mangle ordinary words when redacted
#: A secret's first characters (of a JWT, its signature's) that mark what is left of it
#: where a library cut a text short before bulklink saw it (aiohttp quotes a too-long
#: header's first 100 bytes).
_HEAD = 16
_MIN_QUERY_VALUE = 8  # a webhook's ``sig=`` or ``key=``; ``sv=1.0`` is not a secret
_MIN_PATH_SEGMENT = 16  # a Slack or Teams key segment; ``services`` or ``invoke`` is not
_PERCENT = re.compile(r"%[0-9A-F]{2}")
#: Escapes that can spell any character: a secret may hide behind any mix of them.
_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}|\\u[0-9A-Fa-f]{4}|\\[\\/\"]|&#?\w+;")
_JSON_ESCAPE = re.compile(r"\\u([0-9A-Fa-f]{4})|\\([\\/\"])")  # \u0074, and \/ as PHP writes
#: Rounds of decoding tried on one text (a secret percent-encoded twice takes two).
_DECODE_ROUNDS = 3
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_Text = TypeVar("_Text", str, bytes)
#: The characters of base64, standard and URL-safe.
_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=_-"
_B64_BYTES = _B64.encode()


def secret_forms(secret: str) -> set[str]:
    """Every spelling of ``secret`` a server is known to echo it back in.

    Raw, JSON-escaped (minimal and ``ensure_ascii``), URL-encoded (``quote`` and
    ``quote_plus``, upper- and lower-case hex) and decoded, HTML-escaped, base64
    (standard and URL-safe, with and without padding) and hex. JSON with arbitrary ``\\uXXXX``
    escapes has infinitely many spellings: :meth:`Redactor.body` decodes such bodies first.
    """
    if len(secret) < MIN_SECRET:
        return set()
    raw = secret.encode("utf-8", "surrogatepass")
    b64 = base64.b64encode(raw).decode()
    b64url = base64.urlsafe_b64encode(raw).decode()
    forms = {
        secret,
        unquote(secret),
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        quote(secret, safe=""),
        quote(secret),
        quote_plus(secret),
        html.escape(secret),
        html.escape(secret, quote=False),
        b64,
        b64.rstrip("="),
        b64url,
        b64url.rstrip("="),
        raw.hex(),  # a gateway's or a logger's dump of the header
        raw.hex().upper(),
    }
    forms |= {_PERCENT.sub(lambda m: m.group().lower(), form) for form in list(forms)}
    return {form for form in forms if len(form) >= MIN_SECRET}


def base64_cores(secret: str) -> set[str]:
    """What base64 of any text holding ``secret`` holds of it, at each of the three byte
    alignments (``Bearer <token>`` encoded whole, say): the characters that depend on the
    secret's bytes alone. The run of base64 holding one is masked whole."""
    if len(secret) < MIN_SECRET:
        return set()
    raw = secret.encode("utf-8", "surrogatepass")
    cores = set()
    for shift in range(3):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            text = encode(b"\0" * shift + raw).decode()
            # A group holding a byte that is not the secret's (ours before it, whatever
            # follows it) is spelt otherwise in another text: only whole groups are kept.
            start = 4 if shift else 0
            end = len(text) if (shift + len(raw)) % 3 == 0 else len(text) - 4
            cores.add(text[start:end])
    return {core for core in cores if len(core) >= MIN_SECRET}


def url_secrets(url: str) -> set[str]:
    """The parts of a webhook URL that may be its key, as written and as aiohttp re-spells
    them: the whole URL, its path and query, each long query value and path segment."""
    text = url.strip()
    spellings = {text, unquote(text)}
    with contextlib.suppress(ValueError, TypeError):  # else what was written is all there is
        spellings.add(str(yarl.URL(text)))
    secrets: set[str] = set()
    for spelling in spellings:
        try:
            parts = urlsplit(spelling)
        except ValueError:
            secrets.add(spelling)
            continue
        query = f"?{parts.query}" if parts.query else ""
        secrets |= {spelling, parts.path + query, parts.query}
        if len(parts.path) > 1:
            secrets.add(parts.path)
        secrets |= {v for _, v in parse_qsl(parts.query) if len(v) >= _MIN_QUERY_VALUE}
        secrets |= {s for s in parts.path.split("/") if len(s) >= _MIN_PATH_SEGMENT}
    return secrets


def redact_value(value: Any, redact: Callable[[str], str]) -> Any:
    """A decoded JSON value (or a summary) with every string, keys included, redacted.

    A lone surrogate (``"\\ud800"`` is valid JSON, but no text) becomes U+FFFD: no file
    could hold it, and the report must still be written. One that stands for a byte of a
    file name that is not UTF-8 is shown as that byte (``\\xe9``).
    """
    if isinstance(value, str):
        if _LONE_SURROGATE.search(value):
            value = _LONE_SURROGATE.sub("\ufffd", escape_name_bytes(value))
        return redact(value)
    if isinstance(value, list | tuple):
        return [redact_value(item, redact) for item in value]
    if isinstance(value, Mapping):
        return {redact_value(k, redact): redact_value(v, redact) for k, v in value.items()}
    return value


def _unescaped(match: re.Match[str]) -> str:
    code, char = match.groups()
    return chr(int(code, 16)) if code else char


def _mask_spans(
    text: _Text, needle: _Text, mask: _Text, span: Callable[[int, int], tuple[int, int]]
) -> _Text:
    """``text`` with the span around each ``needle`` found masked: ``span(at, done)``
    widens the find at ``at`` to ``(start, end)``, not back past ``done`` (the end of the
    span before). Found by plain search: linear in ``text``."""
    out: list[_Text] = []
    done = 0
    at = text.find(needle)
    while at >= 0:
        start, end = span(at, done)
        out += [text[done:start], mask]
        done = end
        at = text.find(needle, done)
    if not out:
        return text
    out.append(text[done:])
    return text[:0].join(out)


def _mask_runs(text: _Text, core: _Text, alphabet: _Text, mask: _Text) -> _Text:
    """``text`` with each run of base64 holding ``core`` masked whole. Found by plain
    search, then widened a character at a time: linear however long the runs are (a
    regular expression ``[base64]*core[base64]*`` backtracks quadratically in a long run
    that holds no core, such as an inline image of a ticket's description)."""

    def run(at: int, done: int) -> tuple[int, int]:
        start, end = at, at + len(core)
        while start > done and text[start - 1 : start] in alphabet:
            start -= 1
        while end < len(text) and text[end : end + 1] in alphabet:
            end += 1
        return start, end

    return _mask_spans(text, core, mask, run)


def _private_part(secret: str) -> str:
    """What of ``secret`` is its own: of a JWT, its signature. The header and the claims
    are base64 of JSON that other tokens start alike (``eyJhbGciOi...``, ``eyJzdWIi...``),
    and no secret: another JWT in an answer is not taken for what is left of this one."""
    parts = secret.split(".")
    if secret.startswith("eyJ") and len(parts) == 3:
        return parts[2]
    return secret


def _mask_heads(text: _Text, head: _Text, secret: _Text, mask: _Text) -> _Text:
    """``text`` with each run that begins like ``secret`` (its first :data:`_HEAD`
    characters at least) masked as far as it goes on like it: a secret cut short."""

    def rest(at: int, done: int) -> tuple[int, int]:
        end = at + len(head)
        while end - at < len(secret) and text[end : end + 1] == secret[end - at : end - at + 1]:
            end += 1
        return at, end

    return _mask_spans(text, head, mask, rest)


class Redactor:
    """Replaces every known spelling of the secrets with ``***``; callable on text."""

    def __init__(self, secrets: Iterable[str | None] = (), *, urls: Iterable[str | None] = ()):
        found = {s for s in secrets if s}
        for url in urls:
            if url:
                found |= url_secrets(url)
        self._secrets = frozenset(found)
        forms = {form for secret in found for form in secret_forms(secret)}
        self.forms: tuple[str, ...] = tuple(sorted(forms, key=len, reverse=True))
        self._forms_bytes = [form.encode("utf-8", "surrogatepass") for form in self.forms]
        self._cores = sorted({core for secret in found for core in base64_cores(secret)})
        self._cores_bytes = [core.encode() for core in self._cores]  # base64 is ASCII
        tails = {_private_part(secret) for secret in found}
        self._heads = sorted((tail[:_HEAD], tail) for tail in tails if len(tail) > _HEAD)
        self._heads_bytes = [
            (head.encode("utf-8", "surrogatepass"), secret.encode("utf-8", "surrogatepass"))
            for head, secret in self._heads
        ]
        # The forms to look for first: one contains another (base64 with and without
        # padding, say), so when no shortest one is in a body, none of the rest is.
        self._probes: list[bytes] = []
        heads = [head for head, _ in self._heads_bytes]
        for form in sorted([*self._forms_bytes, *self._cores_bytes, *heads], key=len):
            if not any(probe in form for probe in self._probes):
                self._probes.append(form)

    def __or__(self, other: Redactor) -> Redactor:
        """Both redactors' secrets: the run's credentials and its webhook, say."""
        return Redactor(self._secrets | other._secrets)

    def __call__(self, text: str) -> str:
        """``text`` with every form of every secret replaced by ``***``.

        A text with percent, ``\\uXXXX`` or HTML escapes is looked at decoded too (a
        gateway's page may spell every character of a secret so, in any mix): when the
        decoded text holds a secret, it is what is shown, with the secret masked. A secret
        base64-encoded inside a longer value masks the whole run of base64.
        """
        text = decoded = self._masked(text)
        for _ in range(_DECODE_ROUNDS if self.forms else 0):  # encoded twice: two rounds
            if not _ESCAPE.search(decoded):
                break
            decoded = _JSON_ESCAPE.sub(_unescaped, unquote(decoded))
            decoded = html.unescape(decoded)  # &#x2F; and &sol; as much as &amp;
            if any(form in decoded for form in self.forms):
                text = decoded = self._masked(decoded)
        return text

    def _masked(self, text: str) -> str:
        for form in self.forms:
            if form in text:
                text = text.replace(form, MASK)
        for core in self._cores:
            if core in text:
                text = _mask_runs(text, core, _B64, MASK)
        for head, secret in self._heads:
            if head in text:
                text = _mask_heads(text, head, secret, MASK)
        return text

    def value(self, value: Any) -> Any:
        return redact_value(value, self)

    def body(self, body: bytes) -> bytes:
        """A raw answer without the secrets, as bytes and, for JSON, once decoded.

        JSON can spell a string many ways (``\\u0074ok``, ``\\/``): a body with any
        backslash is decoded, redacted string by string and encoded again, so that neither
        the ticket nor the journal can hold the secret.
        """
        if b"\\" in body or b"%" in body or b"&" in body:  # escapes may spell a secret
            try:
                obj = json.loads(body)
                clean = redact_value(obj, self)
                if clean != obj:
                    body = json.dumps(clean, ensure_ascii=False).encode()
            except (ValueError, UnicodeDecodeError):
                pass  # not JSON: its bytes are all there is, redacted below
            except RecursionError:  # nested too deeply to check: not kept at all
                return b"answer nested too deeply to read"
        if not any(probe in body for probe in self._probes):
            return body
        return self._masked_bytes(body)

    def _masked_bytes(self, body: bytes) -> bytes:
        for form in self._forms_bytes:
            if form in body:
                body = body.replace(form, MASK.encode())
        for core in self._cores_bytes:
            if core in body:
                body = _mask_runs(body, core, _B64_BYTES, MASK.encode())
        for head, secret in self._heads_bytes:
            if head in body:
                body = _mask_heads(body, head, secret, MASK.encode())
        return body
