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
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from bulklink.errors import TokenExpiredError, UsageError


@dataclass(frozen=True, slots=True)
class Auth:
    """Credentials for every request. ``repr`` hides them; :meth:`redact` scrubs text."""

    token: str | None = None
    api_key: str | None = None
    org_id: str | None = None

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["x-api-key"] = self.api_key
        elif self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if self.org_id:
            headers["x-org-id"] = self.org_id
        return headers

    def redact(self, text: str) -> str:
        for secret in (self.token, self.api_key):
            if secret and len(secret) >= 4:  # shorter would mangle ordinary words
                text = text.replace(secret, "***")
        return text

    def __repr__(self) -> str:
        mode = "api-key" if self.api_key else "bearer" if self.token else "none"
        return f"Auth(mode={mode}, org_id={self.org_id!r})"


SANDBOX_TOKEN = "sandbox-token"  # noqa: S105 - not a secret: what --sandbox sends; the embedded simulator accepts any


@dataclass(frozen=True, slots=True)
class Secret:
    """A credential with where it came from, for messages that must not show it."""

    value: str = field(repr=False)
    origin: str


def _read_file(path: str | Path, flag: str) -> str:
    try:
        value = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise UsageError(f"cannot read {flag} {path}: {exc.strerror}") from None
    if not value:
        raise UsageError(f"{flag} {path} is empty")
    return value


def _pick(value: str | None, file: str | Path | None, flag: str) -> Secret | None:
    if value is not None and file is not None:
        raise UsageError(f"give {flag} or {flag}-file, not both")
    if file is not None:
        return Secret(_read_file(file, f"{flag}-file"), f"{flag}-file")
    if value is not None and value.strip():
        return Secret(value.strip(), flag)
    return None


def _from_env(env: Mapping[str, str], name: str) -> Secret | None:
    value = env.get(name, "").strip()
    return Secret(value, name) if value else None


def _check(secret: Secret | None) -> None:
    if secret is not None and any(ord(ch) < 32 or ord(ch) == 127 for ch in secret.value):
        # aiohttp would refuse the header mid-run; say so before anything is sent.
        raise UsageError(f"the credential from {secret.origin} contains a control character")


def resolve_auth(
    *,
    token: str | None = None,
    token_file: str | Path | None = None,
    api_key: str | None = None,
    api_key_file: str | Path | None = None,
    org_id: str | None = None,
    sandbox: bool = False,
    env: Mapping[str, str] | None = None,
) -> Auth:
    """Pick the auth mode; each credential from its option, else its THENA_* variable.

    ``--token-file`` overrides an exported THENA_TOKEN (and ``--api-key-file``
    THENA_API_KEY). A token and an API key together, from wherever, are a usage error:
    which one was meant cannot be guessed.
    """
    env = os.environ if env is None else env
    bearer = _pick(token, token_file, "--token") or _from_env(env, "THENA_TOKEN")
    key = _pick(api_key, api_key_file, "--api-key") or _from_env(env, "THENA_API_KEY")
    _check(bearer)
    _check(key)
    org = (org_id or env.get("THENA_ORG_ID", "")).strip() or None
    if bearer and key:
        raise UsageError(
            f"both a Bearer token ({bearer.origin}) and an API key ({key.origin}) are set; "
            "use one of them"
        )
    if sandbox and not (bearer or key):
        return Auth(token=SANDBOX_TOKEN, org_id=org or "sandbox-org")
    if key:
        return Auth(api_key=key.value, org_id=org)
    if not bearer:
        raise UsageError(
            "missing credentials: set THENA_TOKEN (or --token-file PATH) to a Bearer token, "
            "or THENA_API_KEY (or --api-key-file PATH) to an API key"
        )
    if not org and sandbox:
        org = "sandbox-org"
    if not org:
        raise UsageError("missing organization ID: set THENA_ORG_ID or pass --org-id")
    return Auth(token=bearer.value, org_id=org)


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
