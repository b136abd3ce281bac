"""Which proxy a request goes through: ``--proxy``, ``BULKLINK_PROXY``, else the
environment as curl and requests read it; for the API and for webhooks alike.

aiohttp's ``trust_env`` reads the same variables (through :mod:`urllib.request`), but it
is not used: bulklink must know the proxy it will use before sending (to name its host in
``--dry-run`` and the log, and to hide its credentials everywhere), it must refuse a proxy
scheme it cannot use (``trust_env`` skips a ``socks5://`` proxy with a warning and goes
direct), ``--proxy`` must override the environment, and ``trust_env`` would also send
credentials it finds in ``~/.netrc`` to the API. So the choice is made here, once, and
given to aiohttp as each request's ``proxy=`` (with ``Proxy-Authorization`` in its headers).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import aiohttp

from bulklink.errors import UsageError
from bulklink.options import ConnectionOptions
from bulklink.text import has_controls

_PORT = re.compile(r"[^:\]]:[0-9]+$")  # ``host:port``, not an IPv6 address
_BRACKETED = re.compile(r"\[([^\]]+)\](?::([0-9]+))?")  # an IPv6 address, maybe a port


@dataclass(frozen=True, slots=True)
class Route:
    """One proxy to go through: its URL without credentials, and the credentials."""

    url: str
    host: str
    source: str  # "--proxy", "BULKLINK_PROXY", "HTTPS_PROXY", ...
    user: str = field(default="", repr=False)
    password: str = field(default="", repr=False)
    # The credentials as typed (``user:wr:ong%40pw``), a spelling no decoded form gives.
    typed: tuple[str, ...] = field(default=(), repr=False)

    def request_options(self, url: str) -> dict[str, Any]:
        """aiohttp's per-request keywords to go through this proxy. The credentials go as
        ``Proxy-Authorization: Basic``: on the CONNECT for an https ``url`` (so the server
        never sees them), on the request itself for plain http, which the proxy reads.
        Nothing else goes in ``proxy_headers``: aiohttp adds the session's own headers
        to them, so a session must hold no credentials."""
        options: dict[str, Any] = {"proxy": self.url}
        if self.user:
            header = {"Proxy-Authorization": aiohttp.encode_basic_auth(self.user, self.password)}
            is_https = urlsplit(url).scheme.lower() == "https"
            options["proxy_headers" if is_https else "headers"] = header
        return options


@dataclass(frozen=True, slots=True)
class Proxies:
    """The proxy policy of a run: one proxy for every URL (``--proxy``), none, or the
    environment's per scheme with its ``NO_PROXY`` bypass."""

    fixed: Route | None = None
    disabled: bool = False
    by_scheme: Mapping[str, Route] = field(default_factory=dict)
    no_proxy: str = ""

    def route(self, url: str) -> Route | None:
        """The proxy for ``url``, or None to go direct."""
        if self.disabled:
            return None
        if self.fixed is not None:
            return self.fixed
        parts = urlsplit(url)
        chosen = self.by_scheme.get(parts.scheme.lower())
        if chosen is None or bypassed(parts.hostname or "", parts.port, self.no_proxy):
            return None
        return chosen

    @property
    def routes(self) -> list[Route]:
        return [self.fixed] if self.fixed is not None else list(self.by_scheme.values())

    def secrets(self) -> list[str]:
        """The proxies' credentials, for the one redactor: the password, and the user
        with it (``user:password``, and their base64 in ``Proxy-Authorization``). The
        user name alone is no secret, and often a word (``support``) an answer holds."""
        return [
            secret
            for route in self.routes
            if route.user
            for secret in (f"{route.user}:{route.password}", route.password, *route.typed)
        ]

    def describe(self, url: str) -> str:
        """``proxy.corp:3128 (from HTTPS_PROXY)`` or ``none``: a host, never credentials."""
        chosen = self.route(url)
        if chosen is None:
            return "none (--no-proxy)" if self.disabled else "none"
        return f"{chosen.host} (from {chosen.source})"


def bypassed(host: str, port: int | None, no_proxy: str) -> bool:
    """``NO_PROXY`` as curl and requests read it: ``*``, hosts, domains with or without a
    leading dot (``corp.example`` covers ``api.corp.example``), ``host:port``, IP addresses
    and networks (``10.0.0.0/8``). A loopback host is not bypassed unless named."""
    host = host.lower().rstrip(".")
    address = _address(host)
    for entry in (e.strip().lower() for e in no_proxy.split(",")):
        if entry == "*":
            return True
        name, wanted = _split_port(entry)
        if wanted and str(port) != wanted:
            continue
        if address is not None and _address(name) is not None:
            if address == _address(name):
                return True
            continue
        if address is not None and "/" in name:
            with contextlib.suppress(ValueError):
                if address in ipaddress.ip_network(name, strict=False):
                    return True
            continue
        name = name.lstrip("*").lstrip(".").rstrip(".")
        if name and (host == name or host.endswith(f".{name}")):
            return True
    return False


def _split_port(entry: str) -> tuple[str, str]:
    """A ``NO_PROXY`` entry's name and port (``""`` for any): ``host:port``, ``[::1]:8080``;
    a bare IPv6 address has none."""
    bracketed = _BRACKETED.fullmatch(entry)
    if bracketed is not None:
        return bracketed[1], bracketed[2] or ""
    if _address(entry) is None and _PORT.search(entry):
        name, _, wanted = entry.rpartition(":")
        return name, wanted
    return entry, ""


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def parse_proxy(value: str, source: str) -> Route:
    """A proxy URL checked: ``http://`` only (``host:port`` means it, as in curl); its
    credentials taken out of the URL. Refusals never repeat the URL (it may hold them)."""
    text = value.strip()
    if "://" not in text:
        text = f"http://{text}"
    if has_controls(text) or " " in text:
        raise UsageError(f"{source} holds a space or control character")
    try:
        parts = urlsplit(text)
        host, port = parts.hostname or "", parts.port
    except ValueError:
        raise UsageError(f"{source} is not a valid proxy URL") from None
    if parts.scheme.lower() != "http":
        raise UsageError(
            f"{source}: {parts.scheme}:// proxies are not supported; give an http:// proxy "
            "(it tunnels https with CONNECT)"
        )
    if not host:
        raise UsageError(f"{source} names no proxy host")
    if parts.path.strip("/") or parts.query or parts.fragment:
        raise UsageError(f"{source} must be a proxy's address only (http://host:port)")
    if parts.password and not parts.username:  # it would be neither sent nor hidden
        raise UsageError(f"{source} holds a password without a user name (http://user:pass@host)")
    shown = f"[{host}]" if ":" in host else host
    netloc = shown if port is None else f"{shown}:{port}"
    return Route(
        url=urlunsplit(("http", netloc, "", "", "")),
        host=netloc,
        source=source,
        user=unquote(parts.username or ""),
        password=unquote(parts.password or ""),
        typed=(parts.netloc.rpartition("@")[0], parts.password or ""),
    )


def _env_value(env: Mapping[str, str], name: str) -> tuple[str, str]:
    """The lower-case spelling first, as curl and urllib read it; (variable, value)."""
    for spelling in (name.lower(), name.upper()):
        value = env.get(spelling, "").strip()
        if value:
            return spelling, value
    return "", ""


def resolve_proxies(options: ConnectionOptions, env: Mapping[str, str] | None = None) -> Proxies:
    """``--no-proxy`` or ``--proxy ''``: none; ``--proxy``, else ``BULKLINK_PROXY``: that
    one; else ``https_proxy``/``HTTPS_PROXY``, ``http_proxy``/``HTTP_PROXY`` (either
    falling back to ``all_proxy``/``ALL_PROXY``, as curl reads them) and
    ``no_proxy``/``NO_PROXY``. Checked before anything is sent."""
    env = os.environ if env is None else env
    if options.no_proxy and options.proxy:
        raise UsageError("give --proxy or --no-proxy, not both")
    if options.no_proxy or options.proxy == "":
        return Proxies(disabled=True)
    if options.proxy is not None:
        return Proxies(fixed=parse_proxy(options.proxy, "--proxy"))
    fixed = env.get("BULKLINK_PROXY", "").strip()
    if fixed:
        return Proxies(fixed=parse_proxy(fixed, "BULKLINK_PROXY"))
    by_scheme: dict[str, Route] = {}
    for scheme in ("https", "http"):
        name, value = _env_value(env, f"{scheme}_proxy")
        if not value:
            name, value = _env_value(env, "all_proxy")
        if value:
            by_scheme[scheme] = parse_proxy(value, name)
    return Proxies(by_scheme=by_scheme, no_proxy=_env_value(env, "no_proxy")[1])
