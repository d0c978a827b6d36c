"""``dispatcher status``: the first screen an operator opens, as a list of small checks.

Each check reads one part of the system and answers a :class:`CheckResult`: ``ok``,
``attention`` (something a person has to look at, named in ``problems``) or ``unknown`` (cannot
be measured here, with the reason). A check that cannot reach its dependency answers
``attention``: an unreachable ledger is itself something to look at. New checks (task outcomes
from the ``results`` path, for instance) are one more function in :data:`DEFAULT_CHECKS`.

What is measured, and how, without consuming or delaying any message:

* ``select``: the oldest ``next_run_at`` that is already in the past, over active, unpaused
  subscriptions (one ``limit 1`` due query per shard, the query select itself runs). A tick
  that was processed advanced every due document past its time, so this is the lag of the last
  processed tick; nothing overdue means select is keeping up. No store keeps "the last tick"
  itself (select writes nothing when nothing is due).
* ``due-backlog``: messages waiting on each push subscription. In a project, from Cloud
  Monitoring (``num_undelivered_messages``, ``oldest_unacked_message_age``; needs
  ``roles/monitoring.viewer``). The Pub/Sub emulator has no such metric, and counting by pulling
  would lease (and on a push subscription, delay or dead-letter) real messages, so locally the
  backlog is reported ``unknown``.
* ``dead-letters``: messages on every ``<topic>-dlq-sub``, read the way ``dispatcher dlq list``
  reads them (pulled, then released with ack deadline 0; nothing is acknowledged).
* ``dispatches``: ledger rows in state ``failed``, and rows still ``claimed`` after
  ``stuck_after`` (a crash between claim and create; maintenance ``reconcile`` re-creates them).
* ``queues``: each configured Cloud Tasks queue (every shard of a kind) exists and is RUNNING.
* ``outcomes``: what collectors reported for the dispatches of the last ``outcome_window``, per
  source kind (``dispatcher ledger outcomes``): any final failure, or any dispatch reconcile
  declared ``lost``, needs a person.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, Protocol

from shared.instants import format_instant

if TYPE_CHECKING:
    from shared.config import Settings
    from shared.dal.records import StoredSubscription
    from shared.ledger.repository import OutcomeSummary
    from shared.ops.deadletters import DeadLetterMessage
    from shared.topology import TopicSpec, Topology

State = Literal["ok", "attention", "unknown"]

DEFAULT_LAG = timedelta(minutes=5)
DEFAULT_STUCK_AFTER = timedelta(minutes=15)
DEFAULT_OUTCOME_WINDOW = timedelta(hours=1)
#: Dead letters counted per topic; beyond it the count is shown as "N+".
DEAD_LETTER_LIMIT = 500
EXAMPLES = 5


@dataclass
class CheckResult:
    """One check's answer."""

    name: str
    state: State
    summary: str
    problems: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class StatusReport:
    """Every check's answer, and whether anything needs attention."""

    project: str
    checked_at: datetime
    checks: list[CheckResult]

    @property
    def needs_attention(self) -> bool:
        """True when any check answered ``attention``."""
        return any(c.state == "attention" for c in self.checks)

    @property
    def problems(self) -> list[str]:
        """Every problem, prefixed with its check's name."""
        return [f"{c.name}: {p}" for c in self.checks for p in c.problems]

    def as_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``."""
        return {
            "project": self.project,
            "checked_at": format_instant(self.checked_at),
            "ok": not self.needs_attention,
            "problems": self.problems,
            "checks": [asdict(c) for c in self.checks],
        }


# --- what the checks read ---------------------------------------------------------------------


class DueReader(Protocol):
    """select's due query (see :class:`shared.usecases.select_due.SubscriptionDueStore`)."""

    def due_page(
        self,
        shard: int,
        tick_time: datetime,
        limit: int,
        after: StoredSubscription | None = None,
    ) -> Sequence[StoredSubscription]:
        """Up to ``limit`` due documents of ``shard``, oldest ``next_run_at`` first."""
        ...


class DeadLetterReader(Protocol):
    """:class:`shared.ops.deadletters.DeadLetterQueues`' non-consuming read."""

    def peek(
        self, topics: Sequence[TopicSpec], *, limit: int | None = None
    ) -> list[DeadLetterMessage]:
        """The dead letters of ``topics``, left in place."""
        ...


@dataclass(frozen=True)
class DispatchHealth:
    """What the ledger says about dispatches needing a person."""

    failed: int
    stuck: int
    examples: list[dict[str, Any]]
    last_run_at: datetime | None


@dataclass(frozen=True)
class Backlog:
    """A push subscription's waiting messages (``None``: not measurable, ``why`` says why)."""

    subscription: str
    messages: int | None
    oldest_age_seconds: float | None = None
    why: str | None = None


@dataclass
class StatusContext:
    """Where the checks read from; :func:`shared.cli.status_cmd` builds the real one."""

    settings: Settings
    topology: Topology
    now: datetime
    store: Callable[[], DueReader]
    dead_letters: Callable[[], DeadLetterReader]
    dispatch_health: Callable[[timedelta], DispatchHealth]
    queue_states: Callable[[], Mapping[str, str | None]]
    backlog: Callable[[str], Backlog]
    lag: timedelta = DEFAULT_LAG
    stuck_after: timedelta = DEFAULT_STUCK_AFTER
    # Outcomes of dispatches claimed in a window (the ledger's outcome_summary); None: not read.
    outcomes: Callable[[timedelta], Sequence[OutcomeSummary]] | None = None
    outcome_window: timedelta = DEFAULT_OUTCOME_WINDOW


Check = Callable[[StatusContext], CheckResult]


def _ago(delta: timedelta) -> str:
    seconds = max(int(delta.total_seconds()), 0)
    if seconds >= 86400:
        return f"{seconds // 86400}d {seconds % 86400 // 3600}h"
    if seconds >= 3600:
        return f"{seconds // 3600}h {seconds % 3600 // 60}m"
    return f"{seconds // 60}m {seconds % 60}s"


# --- the checks -------------------------------------------------------------------------------


def check_select(ctx: StatusContext) -> CheckResult:
    """The lag of the last processed tick: the oldest ``next_run_at`` already in the past."""
    store = ctx.store()
    oldest: StoredSubscription | None = None
    for shard in range(ctx.settings.shard_count):
        page = store.due_page(shard, ctx.now, 1)
        if page and (oldest is None or _next_run(page[0]) < _next_run(oldest)):
            oldest = page[0]
    if oldest is None:
        return CheckResult(
            "select", "ok", "no subscription is overdue (every due one was selected)"
        )
    lag = ctx.now - _next_run(oldest)
    details = {
        "oldest_due_subscription": oldest.id,
        "oldest_due_next_run_at": format_instant(_next_run(oldest)),
        "lag_seconds": int(lag.total_seconds()),
    }
    summary = f"oldest due subscription {oldest.id} is {_ago(lag)} behind"
    if lag <= ctx.lag:
        return CheckResult("select", "ok", summary + " (within a tick or two)", details=details)
    problem = (
        f"{oldest.id} was due at {format_instant(_next_run(oldest))} ({_ago(lag)} ago) and is "
        "not selected yet: ticks are not arriving or select is failing (its logs, "
        "dispatcher-ticks-dlq, Cloud Scheduler)"
    )
    return CheckResult("select", "attention", summary, [problem], details)


def _next_run(doc: StoredSubscription) -> datetime:
    value = doc.data.get("next_run_at")
    if not isinstance(value, datetime):  # the due query only returns documents that have one
        raise TypeError(f"{doc.id}: next_run_at is {value!r}")
    return value


def check_backlog(ctx: StatusContext) -> CheckResult:
    """Messages waiting on every push subscription (Cloud Monitoring; unknown on the emulator)."""
    answers = [ctx.backlog(spec.push.subscription) for spec in ctx.topology.topics]
    details = {"subscriptions": [asdict(a) for a in answers]}
    measured = [a for a in answers if a.messages is not None]
    if not measured:
        why = answers[0].why if answers else "no push subscriptions"
        return CheckResult("due-backlog", "unknown", f"not measured: {why}", details=details)
    problems = [
        f"{a.subscription}: {a.messages} message(s) waiting, the oldest for "
        f"{_ago(timedelta(seconds=a.oldest_age_seconds or 0))}"
        for a in measured
        if (a.oldest_age_seconds or 0) > ctx.lag.total_seconds()
    ]
    summary = ", ".join(f"{a.subscription} {a.messages}" for a in measured)
    return CheckResult("due-backlog", "attention" if problems else "ok", summary, problems, details)


def check_dead_letters(ctx: StatusContext) -> CheckResult:
    """Dead letters per ``<topic>-dlq-sub`` (left in place)."""
    reader = ctx.dead_letters()
    counts: dict[str, int] = {}
    classes: dict[str, dict[str, int]] = {}
    for spec in ctx.topology.topics:
        letters = reader.peek([spec], limit=DEAD_LETTER_LIMIT)
        counts[spec.dead_letter.subscription] = len(letters)
        by_class: dict[str, int] = {}
        for letter in letters:
            by_class[letter.reason_class] = by_class.get(letter.reason_class, 0) + 1
        classes[spec.dead_letter.subscription] = by_class
    problems = [
        f"{sub}: {_count(n)} dead letter(s) "
        f"({', '.join(f'{k} x{v}' for k, v in sorted(classes[sub].items()))}); "
        f"dispatcher dlq list --topic {sub}"
        for sub, n in counts.items()
        if n
    ]
    total = sum(counts.values())
    summary = "none" if not total else ", ".join(f"{s} {_count(n)}" for s, n in counts.items() if n)
    return CheckResult(
        "dead-letters",
        "attention" if problems else "ok",
        summary,
        problems,
        {"counts": counts, "reason_classes": classes},
    )


def _count(n: int) -> str:
    return f"{n}+" if n >= DEAD_LETTER_LIMIT else str(n)


def check_dispatches(ctx: StatusContext) -> CheckResult:
    """Failed dispatches, and dispatches claimed but not created for ``stuck_after``."""
    health = ctx.dispatch_health(ctx.stuck_after)
    details: dict[str, Any] = {
        "failed": health.failed,
        "stuck_claimed": health.stuck,
        "stuck_after_minutes": int(ctx.stuck_after.total_seconds() // 60),
        "last_run_at": format_instant(health.last_run_at) if health.last_run_at else None,
        "examples": health.examples,
    }
    last = (
        f"last run recorded {_ago(ctx.now - health.last_run_at)} ago"
        if health.last_run_at
        else "no run recorded"
    )
    problems: list[str] = []
    if health.failed:
        problems.append(
            f"{health.failed} dispatch(es) failed (dispatcher ledger dispatches SUBSCRIPTION)"
        )
    if health.stuck:
        problems.append(
            f"{health.stuck} dispatch(es) claimed for over {details['stuck_after_minutes']} min "
            "without a task (maintenance reconcile re-creates them)"
        )
    problems += [
        f"{e['subscription_id']} @ {e['slot']} source {e['source_id']} ({e['state']}): "
        f"{e['last_error'] or 'no error recorded'}"
        for e in health.examples
    ]
    summary = f"{health.failed} failed, {health.stuck} stuck; {last}"
    return CheckResult("dispatches", "attention" if problems else "ok", summary, problems, details)


def check_queues(ctx: StatusContext) -> CheckResult:
    """Every configured Cloud Tasks queue, every shard of it, exists and is RUNNING."""
    states = ctx.queue_states()
    problems: list[str] = []
    shown: list[str] = []
    by_kind: dict[str, dict[str, str | None]] = {}
    for kind in sorted(ctx.settings.queues):
        paths = ctx.settings.queue_paths(kind)
        shards = len(paths)
        by_kind[kind] = {}
        for path in paths:
            name = path.rsplit("/", 1)[-1]
            state = states.get(path)
            by_kind[kind][name] = state
            shown.append(f"{name} {state or 'MISSING'}")
            # A missing shard refuses only the keys hashed to it: about 1/N of the kind's tasks.
            share = f"about 1/{shards} of the {kind} tasks" if shards > 1 else f"every {kind} task"
            if state is None:
                problems.append(
                    f"{name} ({kind}) does not exist: fanout dead-letters {share} "
                    "(create it, then dispatcher dlq replay --topic dispatcher-due)"
                )
            elif state != "RUNNING":
                problems.append(f"{name} ({kind}) is {state}: its tasks are not dispatched")
    return CheckResult(
        "queues",
        "attention" if problems else "ok",
        ", ".join(shown),
        problems,
        {
            "states": {k: by_kind[k][q.name] for k, q in ctx.settings.queues.items()},
            "shards": by_kind,
        },
    )


def check_outcomes(ctx: StatusContext) -> CheckResult:
    """Final failures and lost dispatches among the last window's, per source kind."""
    window = f"{int(ctx.outcome_window.total_seconds() // 60)} min"
    if ctx.outcomes is None:
        return CheckResult("outcomes", "unknown", "the ledger's outcomes are not read here")
    kinds = list(ctx.outcomes(ctx.outcome_window))
    problems = [
        f"{k.source_kind}: {k.failed} failed, {k.lost} lost of {k.dispatches} in the last "
        f"{window} (dispatcher ledger outcomes --since {window.replace(' min', 'm')})"
        for k in kinds
        if k.failed or k.lost
    ]
    total = sum(k.dispatches for k in kinds)
    succeeded = sum(k.succeeded for k in kinds)
    pending = sum(k.pending for k in kinds)
    summary = (
        f"{succeeded} of {total} succeeded, {pending} pending in the last {window}"
        if total
        else f"no dispatch in the last {window}"
    )
    return CheckResult(
        "outcomes",
        "attention" if problems else "ok",
        summary,
        problems,
        {
            "window_minutes": int(ctx.outcome_window.total_seconds() // 60),
            "kinds": [asdict(k) for k in kinds],
        },
    )


DEFAULT_CHECKS: tuple[Check, ...] = (
    check_select,
    check_backlog,
    check_dead_letters,
    check_dispatches,
    check_queues,
    check_outcomes,
)

_CHECK_NAMES: dict[Check, str] = {
    check_select: "select",
    check_backlog: "due-backlog",
    check_dead_letters: "dead-letters",
    check_dispatches: "dispatches",
    check_queues: "queues",
    check_outcomes: "outcomes",
}


def run_status(ctx: StatusContext, checks: Sequence[Check] = DEFAULT_CHECKS) -> StatusReport:
    """Run every check; one that cannot read its dependency answers ``attention`` with why."""
    results: list[CheckResult] = []
    for check in checks:
        try:
            results.append(check(ctx))
        except Exception as exc:  # one broken dependency must not hide the other checks
            name = _CHECK_NAMES.get(check) or str(getattr(check, "__name__", "check"))
            message = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            results.append(
                CheckResult(name, "attention", "could not check", [f"could not check: {message}"])
            )
    return StatusReport(ctx.settings.project, ctx.now, results)
