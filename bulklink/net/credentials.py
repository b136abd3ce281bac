"""Where the token or API key comes from, and whether a JWT is still good.

Either a Bearer token (Thena's link-endpoint page) with ``x-org-id``, or an ``x-api-key``
(Thena's API introduction: every API accepts it; app keys suit production). The token
is preferably read from the environment or a file: a value on the command line is
visible to other users in the process list.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from bulklink.errors import TokenExpiredError, UsageError
from bulklink.options import ConnectionOptions
from bulklink.redaction import Redactor


@dataclass(frozen=True, slots=True)
class Auth:
    """Credentials for every request. ``repr`` hides them; :attr:`redact` scrubs them.

    ``warnings`` are things the caller should print before the run (a token file others
    can read); they never hold the secret.
    """

    token: str | None = None
    api_key: str | None = None
    org_id: str | None = None
    warnings: tuple[str, ...] = field(default=(), compare=False)
    redact: Redactor = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "redact", Redactor((self.token, self.api_key)))

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["x-api-key"] = self.api_key
        elif self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if self.org_id:
            headers["x-org-id"] = self.org_id
        return headers

    def __repr__(self) -> str:
        mode = "api-key" if self.api_key else "bearer" if self.token else "none"
        return f"Auth(mode={mode}, org_id={self.org_id!r})"


SANDBOX_TOKEN = "sandbox-token"  # noqa: S105 - not a secret: what --sandbox sends; the embedded simulator accepts any


@dataclass(frozen=True, slots=True)
class Secret:
    """A credential with where it came from, for messages that must not show it."""

    value: str = field(repr=False)
    origin: str
    warning: str | None = None  # set (maybe to '') only for a value read from a file


MAX_FILE = 64 * 1024  # far beyond any token; a bigger file is the wrong file
_BOMS = (  # UTF-32 first: its little-endian BOM starts with UTF-16's
    (b"\xff\xfe\x00\x00", "utf-32-le"),
    (b"\x00\x00\xfe\xff", "utf-32-be"),
    (b"\xef\xbb\xbf", "utf-8"),
    (b"\xff\xfe", "utf-16-le"),
    (b"\xfe\xff", "utf-16-be"),
)
# What people paste instead of the bare credential: a curl header or the scheme with it.
_HEADER_LINE = re.compile(r"(?:authorization|x-api-key)\s*:", re.IGNORECASE)
_BEARER = re.compile(r"(?:authorization\s*:\s*)?bearer(?:\s|$)", re.IGNORECASE)


def _decode(data: bytes, name: str) -> str:
    """Text of a credential file: any BOM (Notepad writes one) decides, else strict UTF-8."""
    encoding, start = "utf-8", 0
    for bom, bom_encoding in _BOMS:
        if data.startswith(bom):
            encoding, start = bom_encoding, len(bom)
            break
    try:
        return data[start:].decode(encoding)
    except UnicodeDecodeError as exc:  # the byte itself is not shown: it is part of a secret
        raise UsageError(
            f"{name} is not {encoding.upper()} text (an invalid byte at offset "
            f"{start + exc.start}); save it as UTF-8"
        ) from None


def _read_file(path: str | Path, flag: str) -> tuple[str, str]:
    """The file's credential and a warning ('' when none) about who else can read it."""
    name = f"{flag} {path}"
    try:
        # Opened without waiting: a named pipe no one writes to (a secrets agent that is
        # not running) would block the open for ever; read, it then has nothing (empty).
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)  # a pipe with a writer (`<(pass show ...)`) waits for it
        with os.fdopen(fd, "rb") as fh:
            info = os.fstat(fh.fileno())
            data = fh.read(MAX_FILE + 1)
    except OSError as exc:
        raise UsageError(f"cannot read {name}: {exc.strerror}") from None
    if len(data) > MAX_FILE:
        raise UsageError(f"{name} is larger than {MAX_FILE // 1024} KB: is it the right file?")
    value = _decode(data, name).strip()
    if not value and stat.S_ISFIFO(info.st_mode):
        raise UsageError(f"{name} is a named pipe that nothing wrote a credential to")
    if not value:
        raise UsageError(f"{name} is empty")
    warning = ""
    # Only a regular file has meaningful permissions (not a pipe from `<(pass show ...)`).
    if os.name == "posix" and stat.S_ISREG(info.st_mode) and info.st_mode & 0o077:
        who = "readable" if info.st_mode & 0o044 else "writable"
        warning = f"warning: {name} is {who} by others; chmod 600 it"
    return value, warning


def _pick(value: str | None, file: str | Path | None, flag: str) -> Secret | None:
    if value is not None and file is not None:
        raise UsageError(f"give {flag} or {flag}-file, not both")
    if file is not None:
        text, warning = _read_file(file, f"{flag}-file")
        return Secret(text, f"{flag}-file {file}", warning)
    if value is not None and value.strip():
        return Secret(value.strip(), flag)
    return None


def _from_env(env: Mapping[str, str], name: str) -> Secret | None:
    value = env.get(name, "").strip()
    return Secret(value, name) if value else None


def _check(secret: Secret | None, what: str) -> None:
    """Refuse what cannot be the bare credential, before anything is sent."""
    if secret is None:
        return
    value, origin = secret.value, secret.origin
    only = (
        f"put only the {what} in the file"
        if secret.warning is not None
        else (f"set it to the {what} alone")
    )
    if _BEARER.match(value):
        raise UsageError(f'{origin} holds "Bearer ..."; {only}')
    if _HEADER_LINE.match(value):
        raise UsageError(f"{origin} holds a header line ({value.split(':')[0]}: ...); {only}")
    _refuse_odd_characters(value, f"the credential from {origin}", what)


def _refuse_odd_characters(value: str, holder: str, what: str) -> None:
    """A header's value (a credential, the org ID) is plain ASCII without spaces."""
    for index, ch in enumerate(value):
        code = ord(ch)
        if code < 32 or code == 127:
            # aiohttp would refuse the header mid-run; say so before anything is sent.
            raise UsageError(
                f"{holder} contains a control character (U+{code:04X} at position {index + 1})"
            )
        if code > 126 or ch == " ":
            # A pasted typographic character or a zero-width space: never part of one.
            raise UsageError(
                f"{holder} contains "
                f"{'a space' if ch == ' ' else f'the character U+{code:04X}'} at position "
                f"{index + 1}; a {what} is plain ASCII without spaces"
            )


def resolve_auth(options: ConnectionOptions, env: Mapping[str, str] | None = None) -> Auth:
    """Pick the auth mode; each credential from its option, else its THENA_* variable.

    ``--token-file`` overrides an exported THENA_TOKEN (and ``--api-key-file``
    THENA_API_KEY). A token and an API key together, from wherever, are a usage error:
    which one was meant cannot be guessed.
    """
    env = os.environ if env is None else env
    sandbox = options.sandbox
    bearer = _pick(options.token, options.token_file, "--token") or _from_env(env, "THENA_TOKEN")
    key = _pick(options.api_key, options.api_key_file, "--api-key") or _from_env(
        env, "THENA_API_KEY"
    )
    _check(bearer, "token")
    _check(key, "API key")
    org = chosen_org_id(options, env)
    if bearer and key:
        raise UsageError(
            f"both a Bearer token ({bearer.origin}) and an API key ({key.origin}) are set; "
            "use one of them"
        )
    if sandbox and not (bearer or key):
        return Auth(token=SANDBOX_TOKEN, org_id=org or "sandbox-org")
    if key:
        return Auth(api_key=key.value, org_id=org, warnings=_warnings(key))
    if not bearer:
        raise UsageError(
            "missing credentials: set THENA_TOKEN (or --token-file PATH) to a Bearer token, "
            "or THENA_API_KEY (or --api-key-file PATH) to an API key"
        )
    if not org and sandbox:
        org = "sandbox-org"
    if not org:
        raise UsageError("missing organization ID: set THENA_ORG_ID or pass --org-id")
    return Auth(token=bearer.value, org_id=org, warnings=_warnings(bearer))


def chosen_org_id(options: ConnectionOptions, env: Mapping[str, str] | None = None) -> str | None:
    """``--org-id``, else ``THENA_ORG_ID``; None when neither is set. It is sent as a
    header, so it is refused as a credential is for what no header can hold (a line
    break: ``$(cat orgs.txt)`` of a two-line file)."""
    env = os.environ if env is None else env
    origin = "--org-id" if options.org_id else "THENA_ORG_ID"
    org = (options.org_id or env.get("THENA_ORG_ID", "")).strip()
    _refuse_odd_characters(org, f"the organization ID from {origin}", "organization ID")
    return org or None


def _warnings(secret: Secret) -> tuple[str, ...]:
    return (secret.warning,) if secret.warning else ()


def jwt_expiry(token: str) -> float | None:
    """The ``exp`` claim of a JWT, read locally without checking the signature."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None


def _when(stamp: float) -> str:
    return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def preflight(auth: Auth, seconds_needed: float, now: float | None = None) -> str:
    """Stop on an expired JWT; return a warning when it will expire before the run ends."""
    if not auth.token:
        return ""
    exp = jwt_expiry(auth.token)
    if exp is None:
        return ""
    now = time.time() if now is None else now
    if exp <= now:
        raise TokenExpiredError(
            f"the Bearer token expired at {_when(exp)}; get a new one before running"
        )
    end = now + seconds_needed
    if exp < end:
        return (
            f"warning: the Bearer token expires at {_when(exp)}, before this run's "
            f"estimated end at {_when(end)}; rows after that will stop the run with HTTP 401"
        )
    return ""
