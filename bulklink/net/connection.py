"""Where a run's requests go and as whom: the connection options resolved, once per run."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from bulklink.net.credentials import Auth, resolve_auth
from bulklink.options import ConnectionOptions
from bulklink.urls import DEFAULT_BASE_URL, check_url


@dataclass(frozen=True, slots=True, kw_only=True)
class Connection:
    """The API to call and the credentials to call it with, checked."""

    base_url: str
    auth: Auth
    sandbox: bool = False
    allow_http: bool = False


def chosen_base_url(options: ConnectionOptions, env: Mapping[str, str] | None = None) -> str:
    """``--base-url``, else ``THENA_BASE_URL``, else Thena's; unchecked (a dry run sends none)."""
    env = os.environ if env is None else env
    return options.base_url or env.get("THENA_BASE_URL", "").strip() or DEFAULT_BASE_URL


def connect(options: ConnectionOptions, env: Mapping[str, str] | None = None) -> Connection:
    """Options first, then their ``THENA_*`` variables; checked before anything is sent."""
    base_url = chosen_base_url(options, env)
    auth = resolve_auth(options, env)
    if not options.sandbox:
        base_url = check_url(base_url, what="--base-url", allow_http=options.allow_http)
    return Connection(
        base_url=base_url.rstrip("/"),
        auth=auth,
        sandbox=options.sandbox,
        allow_http=options.allow_http,
    )
