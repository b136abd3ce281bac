"""Plain data shared by every layer: outcomes, pairs, results and the run's summary."""

from __future__ import annotations

import enum
import re
from collections import Counter
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Any, NamedTuple

try:
    VERSION = version("bulklink")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    VERSION = "0+unknown"

#: The ticket fields Thena documents for the link endpoint's answer, in its order (the
#: report has a ``ticket.<field>`` column for each).
TICKET_FIELDS: tuple[str, ...] = (
    "id",
    "title",
    "ticketId",
    "description",
    "accountId",
    "status",
    "statusId",
    "priority",
    "priorityId",
    "storyPoints",
    "account",
    "teamId",
    "teamName",
    "isPrivate",
    "typeId",
    "type",
    "assignedAgent",
    "assignedAgentId",
    "assignedAgentEmail",
    "requestorEmail",
    "customerContactId",
    "customerContactFirstName",
    "customerContactLastName",
    "customerContactEmail",
    "submitterEmail",
    "customFieldValues",
    "deletedAt",
    "archivedAt",
    "createdAt",
    "updatedAt",
    "formId",
    "aiGeneratedTitle",
    "aiGeneratedSummary",
)


class Outcome(enum.StrEnum):
    """What became of one input row."""

    LINKED = "linked"
    FAILED = "failed"
    INVALID = "invalid"
    DUPLICATE = "duplicate"
    SKIPPED = "skipped"
    ALREADY_LINKED = "already-linked"  # linked by an earlier run (the state store): not sent


class Pair(NamedTuple):
    """One link to make; ``row`` is the 1-based data row it came from."""

    row: int
    source: str
    linked: str


class Result(NamedTuple):
    """What happened to one pair. ``body`` is the raw 2xx answer, kept for the journal."""

    row: int
    outcome: Outcome
    http_status: int | None
    error: str
    attempts: int
    ticket: dict[str, Any] | None = None
    body: bytes | None = None
    linked_at: str = ""
    source: str = ""  # the pair's IDs, for a linked row's journal line
    linked: str = ""


@dataclass(frozen=True, slots=True)
class LinkResult:
    """One pair's result as :func:`bulklink.link_pairs` yields it."""

    source: str
    linked: str
    outcome: Outcome
    http_status: int | None
    error: str
    attempts: int
    ticket: dict[str, Any] | None

    @property
    def success(self) -> bool:
        return self.outcome is Outcome.LINKED


@dataclass(frozen=True, slots=True)
class ErrorGroup:
    """Failures that share one error text, with a few example rows to look at."""

    error: str
    count: int
    example_rows: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class BudgetSeen:
    """The API budget that governed a ``--rate auto`` run: ``limit`` requests per
    ``window`` seconds (None: the run ended within its first window) in ``scope`` ("" for
    the plain ``X-RateLimit-*`` headers, else ``OrgID`` and the like)."""

    limit: int
    window: float | None
    scope: str

    def __str__(self) -> str:
        per = f"{self.window:g} s" if self.window is not None else "window"
        return f"{self.limit} per {per}" + (f", {self.scope}" if self.scope else "")

    def to_dict(self) -> dict[str, Any]:
        return {
            "limit": self.limit,
            "window_seconds": self.window,
            "scope": self.scope,
            "text": str(self),
        }


@dataclass(slots=True)
class Summary:
    """The run's outcome in numbers: what the CLI prints and ``--summary-json`` writes."""

    report: str
    rows: int = 0
    counts: dict[str, int] = field(default_factory=lambda: {o.value: 0 for o in Outcome})
    errors: list[ErrorGroup] = field(default_factory=list)
    retryable_rows: int = 0
    resumed_rows: int = 0
    started: str = ""
    finished: str = ""
    elapsed: float = 0.0
    exit_code: int = 0
    stopped: str = ""
    requests: int = 0  # answers the API gave this run, retries included
    throttled: int = 0  # of which 429
    average_rate: float = 0.0  # requests per second, from the first start to the last answer
    budget: BudgetSeen | None = None  # what --rate auto learnt from the API's headers

    @property
    def all_linked(self) -> bool:
        return self.exit_code == 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "report": self.report,
            "rows": self.rows,
            "counts": dict(self.counts),
            "errors": [
                {"error": g.error, "count": g.count, "example_rows": list(g.example_rows)}
                for g in self.errors
            ],
            "retryable_rows": self.retryable_rows,
            "resumed_rows": self.resumed_rows,
            "started": self.started,
            "finished": self.finished,
            "elapsed_seconds": round(self.elapsed, 3),
            "exit_code": self.exit_code,
            "stopped": self.stopped,
            "requests": self.requests,
            "throttled": self.throttled,
            "average_rate": round(self.average_rate, 2),
            "budget": self.budget.to_dict() if self.budget is not None else None,
        }


_HTTP_HEAD = re.compile(r"HTTP \d{3} ")


def _folded(error: str, value: str, name: str) -> str:
    """``error`` with the row's ID ``value`` as ``name``, only where it quotes the ID:
    in parentheses, as bulklink's own words do (``a date (2024-01-01)``), and as a word
    of what a server said after its status (``HTTP 404 Ticket T1 not found``); never
    inside bulklink's words (an ID ``TRUE`` in ``a TRUE/FALSE value``, ``ticket`` in
    ``blank linked ticket ID``) or the status (an ID ``404``)."""
    quoted = f"({value})"
    if quoted in error:
        return error.replace(quoted, f"({name})")
    head = _HTTP_HEAD.match(error)
    if head is None:
        return error
    said = re.sub(rf"(?<!\w){re.escape(value)}(?!\w)", name, error[head.end() :])
    return error[: head.end()] + said


class ErrorTally:
    """Failures grouped by error text, each row's own IDs folded out so groups form."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()
        self._examples: dict[str, list[Any]] = {}

    def add(self, row: Any, error: str, source: str, linked: str) -> None:
        key = error or "(no error text)"
        for value, name in ((source, "<source>"), (linked, "<linked>")):
            # An Excel error value (#N/A) is the error itself, not an ID to fold out.
            if len(value) >= 3 and not value.startswith("#"):
                key = _folded(key, value, name)
        self._counts[key] += 1
        examples = self._examples.setdefault(key, [])
        if len(examples) < 5:
            examples.append(row)

    def groups(self, top: int = 10) -> list[ErrorGroup]:
        return [
            ErrorGroup(error, count, tuple(self._examples[error]))
            for error, count in self._counts.most_common(top)
        ]
