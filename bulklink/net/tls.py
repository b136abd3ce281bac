"""Which CA certificates a run trusts, and what a failed TLS handshake tells the user.

``--ca-bundle``, else ``BULKLINK_CA_BUNDLE``, ``REQUESTS_CA_BUNDLE``, ``SSL_CERT_FILE``
(in that order, as requests and curl users expect), else the system's store. A bundle is
checked before anything is sent; verification is never turned off.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bulklink.errors import UsageError
from bulklink.options import ConnectionOptions

#: Where a CA bundle may come from, first found wins (the option, then its variables).
BUNDLE_VARIABLES = ("BULKLINK_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")
SYSTEM = "the system's CA store"


@dataclass(frozen=True, slots=True)
class Trust:
    """The CA certificates to verify servers with: a bundle file, or the system's store."""

    bundle: Path | None = None
    source: str = ""  # "--ca-bundle", "REQUESTS_CA_BUNDLE", ...

    def context(self) -> ssl.SSLContext:
        """A verifying client context (hostname checked, certificate required)."""
        if self.bundle is None:
            return ssl.create_default_context()
        return ssl.create_default_context(cafile=self.bundle)

    def describe(self) -> str:
        """``the CA bundle /etc/corp-ca.pem (from REQUESTS_CA_BUNDLE)``, or the system's."""
        if self.bundle is None:
            return SYSTEM
        return f"the CA bundle {self.bundle} (from {self.source})"


def resolve_trust(options: ConnectionOptions, env: Mapping[str, str] | None = None) -> Trust:
    """The CA source a run will use, checked: a missing bundle, or one holding no
    certificate, is refused (exit 2) before anything is sent."""
    env = os.environ if env is None else env
    if options.ca_bundle is not None and str(options.ca_bundle).strip():
        return _checked(Path(options.ca_bundle), "--ca-bundle")
    for name in BUNDLE_VARIABLES:
        value = env.get(name, "").strip()
        if value:
            return _checked(Path(value), name)
    return Trust()


def _checked(path: Path, source: str) -> Trust:
    if not path.exists():
        raise UsageError(f"{source}: no such CA bundle {path}")
    if not path.is_file():
        raise UsageError(f"{source}: {path} is not a file (give a PEM file of CA certificates)")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cafile=path)
    except ssl.SSLError:
        raise UsageError(f"{source}: {path} holds no PEM certificate") from None
    except OSError as exc:
        raise UsageError(f"{source}: cannot read {path}: {exc.strerror or exc}") from None
    if not context.cert_store_stats().get("x509"):
        raise UsageError(f"{source}: {path} holds no PEM certificate")
    return Trust(path, source)


def tls_failure(exc: BaseException, host: str, trust: Trust) -> str:
    """One line for a handshake that failed: the host, what failed, the CA source used,
    and the way out (a company's TLS-inspecting proxy has a CA of its own)."""
    verify = getattr(exc, "certificate_error", None) or getattr(exc, "os_error", None) or exc
    if isinstance(verify, ssl.SSLCertVerificationError):
        why = verify.verify_message or verify.reason or "verification failed"
        what = f"the certificate of {host} could not be verified ({why})"
    else:
        reason = getattr(verify, "reason", None) or type(verify).__name__
        what = f"the TLS handshake with {host} failed ({reason})"
    return (
        f"{what} with {trust.describe()}: if a company proxy inspects TLS, give its CA "
        "with --ca-bundle"
    )
