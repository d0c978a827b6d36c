"""Subscription admin: turn what a person typed into a stored document, and change it safely.

What a person types (YAML or JSON) holds the subscription's own fields and its ``id``; the
system fields (``status``, ``next_run_at``, ``shard``, ``created_at``, ``updated_at``) are the
system's, refused on input and computed here. The completed document is validated against
``schemas/subscription.v1.json`` (path and rule on failure), then parsed by
:class:`~shared.subscription.Subscription`, then checked against the configuration (a source kind
without a Cloud Tasks queue could never be dispatched).

``next_run_at`` rules (all times UTC):

* add: the first slot at or after now (or ``starts_at``);
* pause: ``None`` — a paused subscription is never due, even to a query that forgot the ``paused``
  filter; resume: the first slot at or after the moment of resuming, so a pause is not replayed;
* an edit of the schedule (``import --replace``, maintenance ``recompute-next-run``): the first
  slot of the (new) schedule at or after ``min(stored next_run_at, now)``, so slots still waiting
  for a late tick or catch-up are not skipped; running it twice changes nothing the second time;
* no slot left before ``ends_at``: ``None`` and ``status: expired``.

Scheduled digests have their own documents (``delivery_schedules``, one per cron delivery):
every write here is followed by :func:`~shared.ops.delivery_schedules.sync_delivery_schedules`
when the caller passes the schedules store (the CLI always does), which creates, recomputes or
retires them (rules in that module).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from shared.contracts import get_contract
from shared.dal.records import AlreadyExists, StoreConflict, StoredSubscription
from shared.errors import SchemaValidationError
from shared.instants import format_instant
from shared.ops.delivery_schedules import ScheduleAdmin, sync_delivery_schedules
from shared.ops.store import SubscriptionStore
from shared.scheduling import next_run_for
from shared.subscription import InvalidSubscription, Subscription, shard_for

SYSTEM_FIELDS = frozenset({"status", "next_run_at", "shard", "created_at", "updated_at"})
_EPSILON = timedelta(microseconds=1)
_CONFLICT_RETRIES = 5


class SubscriptionInputError(ValueError):
    """A subscription someone typed is invalid: where (file, id, JSON path), which rule, why."""

    def __init__(
        self,
        message: str,
        *,
        subscription_id: str | None = None,
        origin: str | None = None,
        path: str = "$",
        rule: str = "",
    ) -> None:
        self.subscription_id = subscription_id
        self.origin = origin
        self.path = path
        self.rule = rule
        self.problem = message
        where = " ".join(p for p in (origin, repr(subscription_id) if subscription_id else "") if p)
        location = f"{where}: " if where else ""
        rule_text = f" [{rule}]" if rule else ""
        super().__init__(f"{location}{path}: {message}{rule_text}")

    def as_dict(self) -> dict[str, Any]:
        """Plain data for ``--json`` output."""
        return {
            "origin": self.origin,
            "subscription_id": self.subscription_id,
            "path": self.path,
            "rule": self.rule,
            "message": self.problem,
        }


class SubscriptionNotFound(LookupError):  # noqa: N818 - reads as a state
    """No subscription with that id."""

    def __init__(self, subscription_id: str) -> None:
        super().__init__(f"subscription {subscription_id!r} does not exist")
        self.subscription_id = subscription_id


@dataclass(frozen=True)
class Candidate:
    """One subscription read from a file, not validated yet."""

    id: str | None
    raw: Mapping[str, Any]
    origin: str


# --- reading files ---------------------------------------------------------------------------


def parse_text(text: str, origin: str) -> list[Candidate]:
    """Subscriptions from YAML or JSON text: one mapping, a list, or ``{"subscriptions": [...]}``.

    A mapping of id to subscription (``{acme-news: {name: ...}}``) is accepted too. Each entry
    needs an ``id`` unless it came keyed by one.
    """
    import yaml

    try:
        # YAML 1.1 is a superset of the JSON anyone types; one parser for both file kinds.
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1} column {mark.column + 1}" if mark is not None else "$"
        raise SubscriptionInputError(
            f"not valid YAML/JSON: {getattr(exc, 'problem', None) or exc}",
            origin=origin,
            path=where,
            rule="syntax",
        ) from None
    if isinstance(loaded, Mapping) and isinstance(loaded.get("subscriptions"), list):
        loaded = loaded["subscriptions"]
    entries: list[tuple[str, Any]]
    if isinstance(loaded, list):
        entries = [(f"{origin}[{i}]", item) for i, item in enumerate(loaded)]
    elif isinstance(loaded, Mapping) and ("name" in loaded or "id" in loaded):
        entries = [(origin, loaded)]
    elif (
        isinstance(loaded, Mapping)
        and loaded
        and all(isinstance(v, Mapping) for v in loaded.values())
    ):
        entries = [(f"{origin}:{k}", {"id": k, **v}) for k, v in loaded.items()]
    else:
        raise SubscriptionInputError(
            "expected a subscription, a list of them, or {subscriptions: [...]}",
            origin=origin,
            rule="type",
        )
    out: list[Candidate] = []
    for where, item in entries:
        if not isinstance(item, Mapping):
            raise SubscriptionInputError("expected an object", origin=where, rule="type")
        raw = dict(item)
        sub_id = raw.pop("id", None)
        out.append(Candidate(id=sub_id if isinstance(sub_id, str) else None, raw=raw, origin=where))
        if sub_id is not None and not isinstance(sub_id, str):
            raise SubscriptionInputError(
                "id must be a string", origin=where, path="$.id", rule="type"
            )
    return out


def read_file(path: Path) -> list[Candidate]:
    """:func:`parse_text` of a file (``-`` reads standard input)."""
    import sys

    if str(path) == "-":
        return parse_text(sys.stdin.read(), "<stdin>")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SubscriptionInputError("not UTF-8 text", origin=str(path), rule="encoding") from None
    return parse_text(text, str(path))


# --- building documents ---------------------------------------------------------------------


def to_json_compatible(value: Any) -> Any:
    """Datetimes (Firestore timestamps) as RFC 3339 strings, recursively: the schema's form."""
    if isinstance(value, datetime):
        return format_instant(value)
    if isinstance(value, Mapping):
        return {str(k): to_json_compatible(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json_compatible(v) for v in value]
    return value


def first_run_at(subscription: Subscription, now: datetime) -> datetime | None:
    """The first slot at or after ``now`` (``starts_at`` and ``ends_at`` honoured)."""
    return next_run_for(subscription, now - _EPSILON)


def recomputed_next_run(
    subscription: Subscription, stored: datetime | None, now: datetime
) -> datetime | None:
    """``next_run_at`` after a schedule edit: the first slot at or after min(stored, now)."""
    lower = now if stored is None else min(stored, now)
    return first_run_at(subscription, lower)


def next_runs(subscription: Subscription, now: datetime, count: int = 5) -> list[datetime]:
    """The next ``count`` slots at or after ``now`` (fewer when the subscription ends first)."""
    out: list[datetime] = []
    current = first_run_at(subscription, now)
    while current is not None and len(out) < count:
        out.append(current)
        current = next_run_for(subscription, current)
    return out


def display_zone(subscription: Subscription) -> str:
    """The time zone to show times in: the cron schedule's, else UTC."""
    return str(getattr(subscription.schedule, "timezone", "UTC"))


def build_document(
    subscription_id: str | None,
    raw: Mapping[str, Any],
    *,
    now: datetime,
    shard_count: int,
    known_kinds: Iterable[str] | None = None,
    existing: StoredSubscription | None = None,
    origin: str | None = None,
) -> tuple[Subscription, dict[str, Any]]:
    """Validate typed input and complete it into the document to store (Firestore form).

    ``existing`` is the stored document when replacing: ``created_at`` is kept and ``next_run_at``
    follows the schedule-edit rule. Raises :class:`SubscriptionInputError`.
    """

    def error(message: str, path: str = "$", rule: str = "") -> SubscriptionInputError:
        return SubscriptionInputError(
            message, subscription_id=subscription_id, origin=origin, path=path, rule=rule
        )

    if not subscription_id:
        raise error("every subscription needs an id", "$.id", "required")
    given = sorted(SYSTEM_FIELDS & set(raw))
    if given:
        raise error("is maintained by the system; remove it", f"$.{given[0]}", "system-field")
    doc: dict[str, Any] = to_json_compatible(dict(raw))
    doc.setdefault("paused", False)
    doc["status"] = "active"
    if isinstance(doc.get("sources"), list):
        # params is required by the contract; an empty object is what "no parameters" means.
        doc["sources"] = [
            {**s, "params": s.get("params", {})} if isinstance(s, Mapping) else s
            for s in doc["sources"]
        ]
    if isinstance(doc.get("schedule"), Mapping) and "cron" in doc["schedule"]:
        doc["schedule"] = {"timezone": "UTC", **doc["schedule"]}
    created = existing.data.get("created_at") if existing is not None else None
    doc["shard"] = shard_for(subscription_id, shard_count)
    doc["created_at"] = to_json_compatible(created if isinstance(created, datetime) else now)
    doc["updated_at"] = to_json_compatible(now)
    doc["next_run_at"] = None
    contract = get_contract("subscription")
    try:
        contract.validate(doc)
    except SchemaValidationError as exc:
        raise error(
            exc.issues[0].message if exc.issues else exc.message, exc.path, exc.rule
        ) from None
    try:
        subscription = Subscription.from_document(subscription_id, doc)
    except InvalidSubscription as exc:
        path = "$.id" if exc.path == "<id>" else f"$.{exc.path}" if exc.path else "$"
        raise error(exc.problem, path, "model") from None
    if known_kinds is not None:
        kinds = set(known_kinds)
        for index, source in enumerate(subscription.sources):
            if source.kind not in kinds:
                raise error(
                    f"no Cloud Tasks queue is configured for kind {source.kind!r} "
                    f"(configured: {', '.join(sorted(kinds)) or 'none'})",
                    f"$.sources[{index}].kind",
                    "queue",
                )
    stored_next = existing.data.get("next_run_at") if existing is not None else None
    if isinstance(stored_next, datetime):
        next_run = recomputed_next_run(subscription, stored_next, now)
    else:
        next_run = first_run_at(subscription, now)
    if next_run is None and subscription.ends_at is not None and subscription.ends_at <= now:
        raise error("ends_at is already in the past", "$.ends_at", "expired")
    stored = Subscription.from_document(
        subscription_id,
        {**doc, "next_run_at": None if next_run is None else to_json_compatible(next_run)},
    )
    if subscription.paused:
        stored = _replace(stored, next_run_at=None)
    elif next_run is not None:
        stored = _replace(stored, next_run_at=next_run)
    document = stored.to_document()
    # A paused subscription still carries an explicit null, so the field is always present.
    document.setdefault("next_run_at", None)
    return stored, document


def _replace(subscription: Subscription, **changes: Any) -> Subscription:
    from dataclasses import replace

    return replace(subscription, **changes)


def parse_stored(document: StoredSubscription) -> Subscription:
    """The :class:`Subscription` of a stored document (``InvalidSubscription`` if malformed)."""
    return Subscription.from_document(document.id, document.data)


# --- writing ----------------------------------------------------------------------------------

Action = Literal["created", "replaced", "unchanged", "exists"]


@dataclass(frozen=True)
class WriteResult:
    """What happened to one subscription on add or import."""

    id: str
    action: Action
    next_run_at: datetime | None


def write_subscription(
    store: SubscriptionStore,
    subscription_id: str,
    raw: Mapping[str, Any],
    *,
    now: Callable[[], datetime],
    shard_count: int,
    known_kinds: Iterable[str] | None,
    replace: bool = False,
    origin: str | None = None,
    schedules: ScheduleAdmin | None = None,
) -> WriteResult:
    """Create the subscription, or (``replace``) overwrite it keeping ``created_at``.

    Without ``replace`` an existing document is left alone (action ``exists``). With
    ``schedules``, the digest schedules follow the written document (also when it was
    ``unchanged``: a second import repairs what an interrupted one left).
    """

    def done(result: WriteResult, subscription: Subscription) -> WriteResult:
        if schedules is not None:
            sync_delivery_schedules(schedules, subscription_id, subscription, now=now())
        return result

    for _ in range(_CONFLICT_RETRIES):
        existing = store.get(subscription_id) if replace else None
        subscription, document = build_document(
            subscription_id,
            raw,
            now=now(),
            shard_count=shard_count,
            known_kinds=known_kinds,
            existing=existing,
            origin=origin,
        )
        if existing is not None and _same_user_fields(existing.data, document):
            return done(
                WriteResult(subscription_id, "unchanged", _as_dt(existing.data.get("next_run_at"))),
                subscription,
            )
        try:
            if existing is None:
                store.create(subscription_id, document)
                return done(
                    WriteResult(subscription_id, "created", subscription.next_run_at),
                    subscription,
                )
            store.replace(subscription_id, document, if_updated_at=existing.update_time)
            return done(
                WriteResult(subscription_id, "replaced", subscription.next_run_at), subscription
            )
        except AlreadyExists:
            if not replace:
                return WriteResult(subscription_id, "exists", None)
        except StoreConflict:
            pass
        time.sleep(0.05)
    raise StoreConflict(f"subscription {subscription_id!r} keeps changing; try again")


def _same_user_fields(stored: Mapping[str, Any], document: Mapping[str, Any]) -> bool:
    ignore = {"updated_at", "next_run_at", "created_at"}
    left = {k: v for k, v in to_json_compatible(dict(stored)).items() if k not in ignore}
    right = {k: v for k, v in to_json_compatible(dict(document)).items() if k not in ignore}
    return json.dumps(left, sort_keys=True) == json.dumps(right, sort_keys=True)


def _as_dt(value: object) -> datetime | None:
    return value if isinstance(value, datetime) else None


@dataclass(frozen=True)
class StateChange:
    """The outcome of pause or resume."""

    id: str
    changed: bool
    paused: bool
    next_run_at: datetime | None
    status: str


def set_paused(
    store: SubscriptionStore,
    subscription_id: str,
    paused: bool,
    *,
    now: Callable[[], datetime],
    schedules: ScheduleAdmin | None = None,
) -> StateChange:
    """Pause or resume; idempotent. One conditional write on the document's update time.

    With ``schedules``, the digest schedules are synced afterwards: a pause leaves them
    running (select moves a paused subscription's digests on without sending), so this only
    repairs, or retires them when resuming finds the subscription expired.
    """
    for _ in range(_CONFLICT_RETRIES):
        current = store.get(subscription_id)
        if current is None:
            raise SubscriptionNotFound(subscription_id)
        subscription = parse_stored(current)
        if subscription.paused == paused:
            if schedules is not None:
                sync_delivery_schedules(schedules, subscription_id, subscription, now=now())
            return StateChange(
                subscription_id, False, paused, subscription.next_run_at, subscription.status
            )
        instant = now()
        fields: dict[str, Any] = {"paused": paused, "updated_at": instant}
        status = subscription.status
        next_run: datetime | None = None
        if not paused and status == "active":
            next_run = first_run_at(subscription, instant)
            if next_run is None:
                status = "expired"
                fields["status"] = status
        fields["next_run_at"] = next_run
        try:
            store.update(subscription_id, fields, if_updated_at=current.update_time)
        except StoreConflict:
            time.sleep(0.05)
            continue
        if schedules is not None:
            written = _replace(subscription, paused=paused, status=status, next_run_at=next_run)
            sync_delivery_schedules(schedules, subscription_id, written, now=instant)
        return StateChange(subscription_id, True, paused, next_run, status)

    raise StoreConflict(f"subscription {subscription_id!r} keeps changing; try again")


def delete_subscription(
    store: SubscriptionStore,
    subscription_id: str,
    *,
    now: Callable[[], datetime],
    schedules: ScheduleAdmin | None = None,
) -> bool:
    """Delete the document (False when there was none), then retire its digest schedules.

    The schedules are retired even when the document was already gone: a delete interrupted
    after the document went is finished by running it again.
    """
    deleted = store.delete(subscription_id)
    if schedules is not None:
        sync_delivery_schedules(schedules, subscription_id, None, now=now())
    return deleted


@dataclass
class ImportReport:
    """Counts and per-subscription outcomes of an import."""

    results: list[WriteResult] = field(default_factory=list)
    errors: list[SubscriptionInputError] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Results per action, plus ``invalid``."""
        out: dict[str, int] = {"created": 0, "replaced": 0, "unchanged": 0, "exists": 0}
        for result in self.results:
            out[result.action] += 1
        out["invalid"] = len(self.errors)
        return out


def validate_candidates(
    candidates: Sequence[Candidate],
    *,
    now: datetime,
    shard_count: int,
    known_kinds: Iterable[str] | None,
) -> list[SubscriptionInputError]:
    """Every problem of every candidate (duplicate ids across files included); writes nothing."""
    kinds = None if known_kinds is None else list(known_kinds)
    errors: list[SubscriptionInputError] = []
    seen: dict[str, str] = {}
    for candidate in candidates:
        try:
            build_document(
                candidate.id,
                candidate.raw,
                now=now,
                shard_count=shard_count,
                known_kinds=kinds,
                origin=candidate.origin,
            )
        except SubscriptionInputError as exc:
            errors.append(exc)
            continue
        assert candidate.id is not None
        if candidate.id in seen:
            errors.append(
                SubscriptionInputError(
                    f"duplicate id (also in {seen[candidate.id]})",
                    subscription_id=candidate.id,
                    origin=candidate.origin,
                    path="$.id",
                    rule="unique",
                )
            )
        seen.setdefault(candidate.id, candidate.origin)
    return errors
