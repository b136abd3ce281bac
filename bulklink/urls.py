"""The one place URLs are judged and spelled: where a secret may go, and one spelling
per server for the journal's and the store's scopes."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit, urlunsplit

from bulklink.errors import UsageError
from bulklink.text import has_controls

DEFAULT_BASE_URL = "https://platform.thena.ai"
LINK_PATH = "/v1/tickets/link"
_DEFAULT_PORTS = {"https": 443, "http": 80}


def is_loopback(host: str) -> bool:
    """Only a literal loopback address or ``localhost``: a name could resolve anywhere."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.split("%")[0])  # an IPv6 zone id is not the host
    except ValueError:
        return False  # a name (or 127.1 shorthand) could resolve anywhere: not proven local
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def host_of(url: str) -> str:
    """The part of a URL that may be shown: the host, never the path or query (the secret)."""
    try:
        host = urlsplit(url.strip()).hostname
    except ValueError:
        host = None
    return host or "an unparsable URL"


def check_url(url: str, *, what: str, allow_http: bool = False, secret: bool = False) -> str:
    """``url`` as bulklink will use it, if a secret may be sent to it; else UsageError.

    Plain ``http://`` carries the credentials (or, for a webhook, the URL itself) in clear,
    so it is refused unless the host is loopback (127.0.0.0/8, ::1, localhost) or
    ``allow_http`` is set. A base URL loses its trailing ``/`` and may not have a query;
    a ``secret`` URL (a webhook, whose path or query is the key) is kept as given and
    named in messages by its host only.
    """
    text = url.strip() if secret else url.strip().rstrip("/")
    if not secret and _has_user_info(text):
        # Never echoed: the password is in it. Credentials in a URL would also clash with
        # the token's Authorization header.
        raise UsageError(
            f"{what} must not hold a user name or password (host {host_of(text)}): "
            "give the credentials with --token or --api-key (or THENA_TOKEN / THENA_API_KEY)"
        )
    shown = f"(host {host_of(url)})" if secret else repr(url)
    if has_controls(text) or " " in text:
        raise UsageError(f"{what} holds a space or control character {shown}")
    try:
        parts = urlsplit(text)
        host = parts.hostname or ""
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise UsageError(f"{what} is not a valid URL {shown}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not host or not parts.netloc:
        raise UsageError(f"{what} must start with http:// or https:// {shown}")
    if not secret and (parts.query or parts.fragment):
        raise UsageError(f"{what} must not have a query or fragment {shown}")
    if not secret and parts.path.rstrip("/").endswith(LINK_PATH):
        base = text[: text.rstrip("/").rindex(LINK_PATH)]
        raise UsageError(
            f"{what} {shown} already ends in {LINK_PATH}, which bulklink adds itself: "
            f"give the base URL only ({base!r})"
        )
    if scheme == "http" and not allow_http and not is_loopback(host):
        subject = what if secret else f"{what} {text}"
        raise UsageError(
            f"{subject} must use https://: {host} is not loopback, and plain http would "
            "carry the secret in clear (--allow-http sends it anyway)"
        )
    return text


def _has_user_info(url: str) -> bool:
    try:
        netloc = urlsplit(url).netloc
    except ValueError:
        netloc = url.split("//", 1)[-1].split("/", 1)[0]
    return "@" in netloc


def normalise_url(url: str) -> str:
    """One spelling per server, for the journal's and the store's scopes: scheme and host
    lower-cased, default port and trailing ``/`` dropped; credentials, query and fragment
    left out (they never belong in a journal or a store). A name without a scheme
    (``sandbox:``) is kept as it is."""
    text = url.strip()
    if "://" not in text:
        return text.rstrip("/") or text
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is not None and port != _DEFAULT_PORTS.get(scheme):
        host = f"{host}:{port}"
    return urlunsplit((scheme, host, parts.path.rstrip("/"), "", ""))
