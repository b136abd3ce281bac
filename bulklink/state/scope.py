"""Where links count: one server and one organization, for the journal and the store alike.

Not keyed on the token or key themselves, so a rotated credential still resumes and still
finds its links, nor on the auth mode: a Bearer token and an API key for the same org link
the same tickets. Only an API key without ``--org-id`` decides the org by itself; the key
then stands in for the org, as a slow hash (never the key) that is fixed so it can be found
again. The embedded simulator is one scope whatever org it is told: it checks none.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from bulklink.text import escape_controls
from bulklink.urls import normalise_url

SANDBOX = "sandbox:"
_KEY_PREFIX = "api-key:"
_BESIDE = "the journal beside the report"


def key_hash(api_key: str) -> str:
    """The org an API key decides, as the store and the journal record it."""
    digest = hashlib.pbkdf2_hmac("sha256", api_key.encode(), b"bulklink-scope", 200_000)
    return _KEY_PREFIX + digest.hex()[:24]


@dataclass(frozen=True)
class Scope:
    """A base URL (normalised on construction; ``sandbox:`` for the simulator) and an org
    ID (``api-key:<hash>`` when an API key decides the org, ``""`` when nothing does)."""

    base_url: str
    org_id: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "base_url", normalise_url(self.base_url))
        object.__setattr__(self, "org_id", self.org_id or "")

    @classmethod
    def build(
        cls, base_url: str, org_id: str | None, *, sandbox: bool, api_key: str | None = None
    ) -> Scope:
        if sandbox:
            return cls(SANDBOX)
        if not org_id and api_key:
            return cls(base_url, key_hash(api_key))
        return cls(base_url, org_id or "")

    @classmethod
    def from_header(cls, found: Any) -> Scope | None:
        """The scope a journal's header records (:meth:`header`), or None when it does not
        say one whole."""
        if not isinstance(found, dict):
            return None
        if found.get("sandbox") is True:
            return cls(SANDBOX)
        url, org, key = found.get("base_url"), found.get("org_id"), found.get("key_hash")
        if not isinstance(url, str) or not url:
            return None
        if isinstance(key, str) and key.startswith(_KEY_PREFIX):
            return cls(url, key)
        return cls(url, org if isinstance(org, str) else "")

    @property
    def sandbox(self) -> bool:
        return self.base_url == SANDBOX

    def header(self) -> dict[str, Any]:
        """The scope as a journal's header records it: never a secret."""
        by_key = self.org_id.startswith(_KEY_PREFIX)
        return {
            "base_url": None if self.sandbox else self.base_url,
            "org_id": (self.org_id or None) if not by_key else None,
            "sandbox": self.sandbox,
            "key_hash": self.org_id if by_key else None,
        }

    def mismatch(self, found: Any) -> str:
        """What differs between a journal's recorded scope and this one ('' if nothing)."""
        if not isinstance(found, dict):
            return f"{_BESIDE} does not say where it was written"
        mine = self.header()
        if any(found.get(k) != mine[k] for k in ("base_url", "org_id", "sandbox")):
            return (
                f"{_BESIDE} was written against {_describe(found)}; "
                f"this run targets {_describe(mine)}"
            )
        if found.get("key_hash") == mine["key_hash"]:
            return ""
        return (
            f"{_BESIDE} was written against {_describe(found)} with another API key and no "
            "org ID, so maybe for another org (give --org-id to resume across a key change)"
        )


def _describe(scope: dict[str, Any]) -> str:
    """A recorded scope for a message (values from a file: control characters escaped)."""
    if scope.get("sandbox") is True:
        return "the sandbox"
    url = escape_controls(str(scope.get("base_url"))[:200])
    org = scope.get("org_id")
    if org:
        return f"{url} (org {escape_controls(str(org)[:200])})"
    if scope.get("key_hash"):
        return f"{url} (no org ID: the API key's own org)"
    return f"{url} (no org ID)"
