"""What a delivery email says: subject, a plain-text part and an HTML part, stable headers.

Pure: it gets what the ledger knows (:class:`Collected`) and returns an
:class:`~email.message.EmailMessage`. The ``Message-ID`` comes from the delivery key
(:func:`shared.delivery_key.message_id`), so every copy of one delivery, including a duplicate
sent in the crash window, is the same message to mail clients and archives. Every text that
came from outside (subscription names, source ids, collectors' error messages) is escaped in
the HTML part.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime
from zoneinfo import ZoneInfo

from shared.delivery_key import DeliveryKey

# Final states a source can be reported in; anything else is still running.
_PROBLEMS = frozenset({"failed", "lost"})
# One email must stay readable: a minutely subscription's daily digest lists the problems,
# not 1440 runs.
MAX_LISTED_RUNS = 50


@dataclass(frozen=True)
class SourceReport:
    """One dispatch of the period: what one source collected for one slot."""

    slot: datetime
    source_id: str
    source_kind: str
    # succeeded | skipped | failed | lost | started | None (no outcome yet) | not-created
    state: str | None
    final: bool
    items: int | None
    error: str | None

    @property
    def problem(self) -> bool:
        return (self.state in _PROBLEMS and self.final) or self.state == "not-created"


@dataclass(frozen=True)
class Collected:
    """What the email reports on: the subscription, the delivery and the period's dispatches."""

    key: DeliveryKey
    subscription_name: str
    format: str
    period_start: datetime
    # Exclusive end of the period: the digest's slot; for an alert, the minute after the run.
    period_end: datetime
    zone: ZoneInfo
    sources: Sequence[SourceReport]

    @property
    def items(self) -> int:
        return sum(s.items or 0 for s in self.sources)

    @property
    def runs(self) -> list[datetime]:
        return sorted({s.slot for s in self.sources})

    @property
    def problems(self) -> list[SourceReport]:
        return [s for s in self.sources if s.problem]


def _local(value: datetime, zone: ZoneInfo) -> str:
    return value.astimezone(zone).strftime("%Y-%m-%d %H:%M %Z")


def subject(content: Collected) -> str:
    """The subject line: which subscription, which slot or period, the numbers that matter."""
    failed = len({s.source_id for s in content.problems})
    failures = f", {failed} source{'s' if failed != 1 else ''} failed" if failed else ""
    if content.format == "alert":
        when = _local(content.key.slot, content.zone)
        return f"[{content.subscription_name}] {content.items} new items at {when}{failures}"
    runs = len(content.runs)
    return (
        f"[{content.subscription_name}] digest {_local(content.key.slot, content.zone)}: "
        f"{content.items} items from {runs} run{'s' if runs != 1 else ''}{failures}"
    )


def _text(content: Collected) -> str:
    zone = content.zone
    lines = [subject(content), ""]
    if content.format == "digest":
        lines.append(
            f"Period: {_local(content.period_start, zone)} to {_local(content.period_end, zone)}"
        )
    else:
        lines.append(f"Run: {_local(content.key.slot, zone)}")
    lines.append(f"Items collected: {content.items}")
    lines.append("")
    if not content.sources:
        lines.append("Nothing was collected in this period.")
    by_source: dict[str, int] = {}
    for report in content.sources:
        by_source[report.source_id] = by_source.get(report.source_id, 0) + (report.items or 0)
    if by_source:
        lines.append("By source:")
        lines.extend(f"  {source}: {items}" for source, items in sorted(by_source.items()))
    if content.problems:
        lines.append("")
        lines.append("Sources that failed:")
        for report in content.problems[:MAX_LISTED_RUNS]:
            reason = report.error or report.state or "unknown"
            lines.append(f"  {_local(report.slot, zone)} {report.source_id}: {reason}")
        hidden = len(content.problems) - MAX_LISTED_RUNS
        if hidden > 0:
            lines.append(f"  ... and {hidden} more")
    lines.append("")
    lines.append(f"Subscription {content.key.subscription_id}, delivery {content.key.delivery_id}.")
    return "\n".join(lines) + "\n"


def _html(content: Collected) -> str:
    e = html.escape
    zone = content.zone
    rows = []
    for report in content.sources[: MAX_LISTED_RUNS * 4]:
        style = ' style="color:#b00"' if report.problem else ""
        rows.append(
            f"<tr{style}><td>{e(_local(report.slot, zone))}</td><td>{e(report.source_id)}</td>"
            f"<td>{e(report.state or 'pending')}</td><td>{report.items or 0}</td>"
            f"<td>{e(report.error or '')}</td></tr>"
        )
    table = (
        "<table border=1 cellpadding=4><tr><th>Slot</th><th>Source</th><th>State</th>"
        "<th>Items</th><th>Error</th></tr>" + "".join(rows) + "</table>"
        if rows
        else "<p>Nothing was collected in this period.</p>"
    )
    return (
        f"<html><body><h2>{e(subject(content))}</h2>"
        f"<p>Items collected: <b>{content.items}</b></p>{table}"
        f"<p><small>Subscription {e(content.key.subscription_id)}, delivery "
        f"{e(content.key.delivery_id)}.</small></p></body></html>\n"
    )


def render(content: Collected, *, sender: str, message_id: str, sent_at: datetime) -> EmailMessage:
    """The message for ``content.key.recipient``: plain text first, HTML as the alternative."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = content.key.recipient
    message["Subject"] = subject(content)
    message["Date"] = format_datetime(sent_at)
    message["Message-ID"] = message_id
    # RFC 3834: no vacation auto-replies to a machine's mail.
    message["Auto-Submitted"] = "auto-generated"
    message["X-Dispatcher-Delivery"] = (
        f"{content.key.subscription_id}/{content.key.delivery_id}/{content.key.slot_text}"
    )
    message.set_content(_text(content))
    message.add_alternative(_html(content), subtype="html")
    return message
