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
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bulklink.client import Auth
from bulklink.errors import TokenExpiredError, UsageError

SANDBOX_TOKEN = "sandbox-token"  # noqa: S105 - not a secret: what --sandbox sends; the embedded simulator accepts any


@dataclass(frozen=True, slots=True)
class Secret:
    """A credential with where it came from, for messages that must not show it."""

    value: str
    origin: str


def _read_file(path: str | Path, flag: str) -> str:
    try:
        value = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise UsageError(f"cannot read {flag} {path}: {exc.strerror}") from None
    if not value:
        raise UsageError(f"{flag} {path} is empty")
    return value


def _pick(value: str | None, file: str | Path | None, env: str, flag: str) -> Secret | None:
    if value is not None and file is not None:
        raise UsageError(f"give {flag} or {flag}-file, not both")
    if file is not None:
        return Secret(_read_file(file, f"{flag}-file"), f"{flag}-file")
    if value:
        return Secret(value.strip(), flag)
    from_env = os.environ.get(env, "").strip()
    return Secret(from_env, env) if from_env else None


def resolve_auth(
    *,
    token: str | None = None,
    token_file: str | Path | None = None,
    api_key: str | None = None,
    api_key_file: str | Path | None = None,
    org_id: str | None = None,
    sandbox: bool = False,
) -> Auth:
    """Pick the auth mode from arguments, files and THENA_* variables; exit-2 errors otherwise."""
    bearer = _pick(token, token_file, "THENA_TOKEN", "--token")
    key = _pick(api_key, api_key_file, "THENA_API_KEY", "--api-key")
    org = (org_id or os.environ.get("THENA_ORG_ID", "")).strip() or None
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
