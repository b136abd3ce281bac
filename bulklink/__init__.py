"""bulklink: link Thena tickets in bulk, as fast as the API allows and no faster.

The public API is imported lazily (PEP 562) so that ``bulklink --help`` does not pay for
pandas and aiohttp.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bulklink.api import dry_run as dry_run
    from bulklink.api import list_runs as list_runs
    from bulklink.api import retry_job as retry_job
    from bulklink.api import run_job as run_job
    from bulklink.console import Console as Console
    from bulklink.errors import Blocked as Blocked
    from bulklink.errors import BulklinkError as BulklinkError
    from bulklink.errors import CredentialsRejected as CredentialsRejected
    from bulklink.errors import DiskError as DiskError
    from bulklink.errors import InputError as InputError
    from bulklink.errors import InternalError as InternalError
    from bulklink.errors import Interrupted as Interrupted
    from bulklink.errors import LockedError as LockedError
    from bulklink.errors import TokenExpiredError as TokenExpiredError
    from bulklink.errors import UsageError as UsageError
    from bulklink.models import ErrorGroup as ErrorGroup
    from bulklink.models import LinkResult as LinkResult
    from bulklink.models import Outcome as Outcome
    from bulklink.models import Summary as Summary
    from bulklink.stream import link_pairs as link_pairs
    from bulklink.tables.report.reader import read_report as read_report

from bulklink.models import VERSION

__version__ = VERSION

_EXPORTS = {
    "run_job": "bulklink.api",
    "retry_job": "bulklink.api",
    "link_pairs": "bulklink.stream",
    "read_report": "bulklink.tables.report.reader",
    "dry_run": "bulklink.api",
    "list_runs": "bulklink.api",
    "Console": "bulklink.console",
    "BulklinkError": "bulklink.errors",
    "UsageError": "bulklink.errors",
    "TokenExpiredError": "bulklink.errors",
    "InputError": "bulklink.errors",
    "LockedError": "bulklink.errors",
    "CredentialsRejected": "bulklink.errors",
    "Blocked": "bulklink.errors",
    "DiskError": "bulklink.errors",
    "InternalError": "bulklink.errors",
    "Interrupted": "bulklink.errors",
    "Outcome": "bulklink.models",
    "LinkResult": "bulklink.models",
    "Summary": "bulklink.models",
    "ErrorGroup": "bulklink.models",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'bulklink' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return [*globals(), *__all__]
