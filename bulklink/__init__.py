"""bulklink: link Thena tickets in bulk, as fast as the API allows and no faster."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("bulklink")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"
