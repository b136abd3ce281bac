"""The run's numbers as a Prometheus text file, for node_exporter's textfile collector.

prometheus_client formats the file (its own registry, never the global one); the write is
atomic (an unpredictably named temporary file in the same folder, then a rename) so the
collector never reads half a file and a link planted in the folder is never written
through. prometheus_client's ``write_to_textfile`` is not used: its temporary name is
predictable. A failure to write is a warning for the caller, never a crash of the run.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge, generate_latest

from bulklink._fs import write_atomically
from bulklink.errors import BulklinkError
from bulklink.models import BudgetSeen
from bulklink.text import escape_controls

#: The label every series carries. Prometheus renames it to ``exported_job`` on scrape
#: unless the scrape config says ``honor_labels: true`` (node_exporter's own ``job`` wins).
JOB_LABEL = "job"


def render_metrics(
    *,
    job: str,
    counts: Mapping[str, int],
    exit_code: int,
    duration_seconds: float,
    finished_timestamp: float,
    last_success_timestamp: float | None,
    requests: int,
    throttled: int,
    average_rate: float = 0.0,
    budget: BudgetSeen | None = None,
) -> bytes:
    """The file's content. ``last_success_timestamp`` None (never succeeded) is written as 0,
    so an alert on its age fires for a job that has never once linked everything."""
    registry = CollectorRegistry(auto_describe=True)
    job = escape_controls(job)  # a label is UTF-8: a name's stray bytes shown as \xe9

    def gauge(name: str, doc: str, value: float) -> None:
        Gauge(name, doc, [JOB_LABEL], registry=registry).labels(job).set(value)

    rows = Gauge(
        "bulklink_last_run_rows",
        "Input rows of the last run, by outcome.",
        [JOB_LABEL, "outcome"],
        registry=registry,
    )
    for outcome, n in counts.items():
        rows.labels(job, outcome).set(n)
    gauge("bulklink_last_run_exit_code", "Exit code of the last run (0: all linked).", exit_code)
    gauge(
        "bulklink_last_run_duration_seconds",
        "Wall time of the last run.",
        duration_seconds,
    )
    gauge(
        "bulklink_last_run_finished_timestamp_seconds",
        "When the last run finished, in UNIX seconds.",
        finished_timestamp,
    )
    gauge(
        "bulklink_last_success_timestamp_seconds",
        "When a run of this job last exited 0, in UNIX seconds (0: never).",
        last_success_timestamp or 0.0,
    )
    gauge(
        "bulklink_last_run_requests",
        "HTTP requests the last run sent, retries included.",
        requests,
    )
    gauge(
        "bulklink_last_run_throttled_requests",
        "Requests of the last run that the API answered 429 (rate limited).",
        throttled,
    )
    gauge(
        "bulklink_last_run_average_rate",
        "Requests per second the last run sent, from its first start to its last answer.",
        average_rate,
    )
    if budget is not None:  # --rate auto learnt the API's budget
        for name, doc, value in (
            ("limit", "Requests per window of the API budget", budget.limit),
            ("window_seconds", "Window in seconds of the API budget", budget.window or 0.0),
        ):
            Gauge(
                f"bulklink_last_run_budget_{name}",
                f"{doc} that governed the last run (--rate auto; scope '' = plain).",
                [JOB_LABEL, "scope"],
                registry=registry,
            ).labels(job, budget.scope).set(value)
    return generate_latest(registry)


def write_metrics(path: str | os.PathLike[str], content: bytes) -> str | None:
    """Write the metrics file (:func:`render_metrics`' content); ``None`` when written, else
    one warning line saying why not. The temporary name starts with a dot, so a collector
    reading ``*.prom`` never sees it; 0644 whatever the umask, since the collector often
    runs as another user."""
    target = Path(path)
    try:
        write_atomically(target, content, 0o644, exact_mode=True)
    except (OSError, ValueError, BulklinkError) as exc:
        cause = exc.__cause__ if isinstance(exc, BulklinkError) else exc  # the OS's words
        why = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(exc)
        return f"warning: the metrics file {target} was not written: {why}"
    return None
