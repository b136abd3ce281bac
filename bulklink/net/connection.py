"""Where a run's requests go, through what and as whom: the connection options resolved,
once per run."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from bulklink.net.credentials import Auth, resolve_auth
from bulklink.net.proxy import Proxies, resolve_proxies
from bulklink.net.tls import Trust, resolve_trust
from bulklink.options import ConnectionOptions
from bulklink.redaction import Redactor
from bulklink.urls import DEFAULT_BASE_URL, check_url


@dataclass(frozen=True, slots=True, kw_only=True)
class Connection:
    """The API to call, the credentials to call it with and the way there, checked."""

    base_url: str
    auth: Auth
    sandbox: bool = False
    allow_http: bool = False
    proxies: Proxies = field(default_factory=Proxies)
    trust: Trust = field(default_factory=Trust)

    @property
    def api_proxies(self) -> Proxies:
        """The embedded sandbox is in this process: never reached through a proxy."""
        return Proxies(disabled=True) if self.sandbox else self.proxies

    @property
    def redact(self) -> Redactor:
        """The credentials and the proxies' credentials out of any text."""
        return secrets_redactor(self.auth, self.proxies)

    def describe(self, notify_url: str | None = None) -> str:
        return describe_network(
            self.proxies, self.trust, self.base_url, notify_url, sandbox=self.sandbox
        )


def secrets_redactor(auth: Auth, proxies: Proxies) -> Redactor:
    """Every secret a run holds: the API's credentials and the proxies' (which a proxy's
    error page, or the server behind it, may echo into an answer)."""
    return auth.redact | Redactor(proxies.secrets())


def describe_network(
    proxies: Proxies,
    trust: Trust,
    base_url: str,
    notify_url: str | None = None,
    *,
    sandbox: bool = False,
) -> str:
    """Which proxy (host only) and which CA certificates a run will use."""
    api = "the embedded sandbox, direct" if sandbox else f"proxy {proxies.describe(base_url)}"
    hook = f"; the webhook: proxy {proxies.describe(notify_url)}" if notify_url else ""
    return f"network: the API: {api}{hook}; CA certificates: {trust.describe()}"


def chosen_base_url(options: ConnectionOptions, env: Mapping[str, str] | None = None) -> str:
    """``--base-url``, else ``THENA_BASE_URL``, else Thena's; unchecked (a dry run sends none)."""
    env = os.environ if env is None else env
    return options.base_url or env.get("THENA_BASE_URL", "").strip() or DEFAULT_BASE_URL


def connect(options: ConnectionOptions, env: Mapping[str, str] | None = None) -> Connection:
    """Options first, then their variables; checked before anything is sent."""
    base_url = chosen_base_url(options, env)
    auth = resolve_auth(options, env)
    if not options.sandbox:
        base_url = check_url(base_url, what="--base-url", allow_http=options.allow_http)
    return Connection(
        base_url=base_url.rstrip("/"),
        auth=auth,
        sandbox=options.sandbox,
        allow_http=options.allow_http,
        proxies=resolve_proxies(options, env),
        trust=resolve_trust(options, env),
    )
