"""The subscription domain model: what one Firestore ``subscriptions`` document means.

The JSON Schema (``schemas/subscription.v1.json``) validates documents on the way in; this module
turns a document into typed, immutable values the scheduling core can trust, and back. It is
defensive on its own: anything malformed raises :class:`InvalidSubscription` naming the field path
(``schedule.timezone``, ``sources[2].id``), the problem and the offending value, so a document that
slipped past validation fails loudly here rather than scheduling something nobody asked for.

Time fields accept timezone-aware ``datetime`` objects (what the Firestore client returns) or
RFC 3339 strings (what a person types); naive datetimes are refused because their instant is
unknown. Every datetime is normalised to UTC.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal, Protocol, TypeAlias, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from shared.instants import format_instant

__all__ = [
    "CATCH_UP_POLICIES",
    "DEFAULT_CATCH_UP_MAX_SLOTS",
    "DEFAULT_CATCH_UP_WINDOW",
    "AfterRun",
    "CatchUp",
    "CatchUpPolicy",
    "CronSchedule",
    "Delivery",
    "DeliveryFormat",
    "DeliverySchedule",
    "EverySchedule",
    "InvalidSubscription",
    "Schedule",
    "Source",
    "Status",
    "Subscription",
    "parse_instant",
    "shard_for",
]

CatchUpPolicy: TypeAlias = Literal["skip", "latest", "all"]
Status: TypeAlias = Literal["active", "expired"]
DeliveryFormat: TypeAlias = Literal["digest", "alert"]

CATCH_UP_POLICIES: Final[tuple[CatchUpPolicy, ...]] = ("skip", "latest", "all")
STATUSES: Final[tuple[Status, ...]] = ("active", "expired")
DEFAULT_CATCH_UP_WINDOW: Final = 3600
DEFAULT_CATCH_UP_MAX_SLOTS: Final = 60
# Bounds shared with schemas/subscription.v1.json: the catch-up window bounds how many slots one
# tick may enumerate, so it is capped even though the schema normally rejects larger values first.
MAX_CATCH_UP_WINDOW: Final = 7 * 24 * 3600
MAX_CATCH_UP_SLOTS: Final = 1440
MIN_EVERY: Final = 60
MAX_EVERY: Final = 31 * 24 * 3600
MAX_SOURCES: Final = 100
MAX_NAME_LENGTH: Final = 200
MAX_JITTER_SECONDS: Final = 59
MAX_DELIVERIES: Final = 20
MAX_RECIPIENTS: Final = 50
DELIVERY_FORMATS: Final[tuple[DeliveryFormat, ...]] = ("digest", "alert")

# The key of the catch-up window inside ``catch_up`` (seconds). One constant so that agreeing on
# the name with the schema is a one-line change.
CATCH_UP_WINDOW_KEY: Final = "window"

_SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9_-]{0,98}[a-z0-9])?$")
_KIND = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
# The same rule as schemas/subscription.v1.json $defs.email: a bare address with no character
# that could end an SMTP command or a header (CR, LF, comma, angle brackets, quotes, spaces).
EMAIL = re.compile(
    r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\Z"
)
MAX_EMAIL_LENGTH: Final = 254

_TOP_LEVEL_KEYS: Final = frozenset(
    {
        "name",
        "paused",
        "status",
        "schedule",
        "starts_at",
        "ends_at",
        "sources",
        "catch_up",
        "deliveries",
        "jitter_seconds",
        "next_run_at",
        "shard",
        "created_at",
        "updated_at",
    }
)
_MISSING: Final = object()


class InvalidSubscription(ValueError):  # noqa: N818 - the name the other layers agreed on
    """A subscription document (or one of its fields) is malformed.

    ``path`` is the dotted field path inside the document (``""`` for the document itself, or
    ``"<id>"`` for the document id), ``problem`` says what is wrong, ``value`` is the offending
    value (absent when the field is missing).
    """

    def __init__(self, path: str, problem: str, value: object = _MISSING) -> None:
        self.path = path
        self.problem = problem
        self.value: object | None = None if value is _MISSING else value
        where = path or "document"
        text = f"{where}: {problem}"
        if value is not _MISSING:
            shown = repr(value)
            text += f" (got {shown[:117] + '...' if len(shown) > 120 else shown})"
        super().__init__(text)


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def parse_instant(value: object, path: str = "") -> datetime:
    """Turn an aware ``datetime`` or an RFC 3339 string into a UTC-aware ``datetime``.

    Raises :class:`InvalidSubscription` (with ``path``) for naive datetimes, strings without an
    offset, and anything else.
    """
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise InvalidSubscription(path, "datetime must be timezone-aware", value)
        return value.astimezone(UTC)
    if isinstance(value, str):
        # RFC 3339 allows lower-case 't'/'z' and a space separator; fromisoformat wants 'T'/'Z'.
        text = value.strip()
        if len(text) < 19 or text[10] not in "Tt ":
            raise InvalidSubscription(path, "expected an RFC 3339 date-time string", value)
        text = text[:10] + "T" + text[11:]
        if text[-1] in "zZ":
            text = text[:-1] + "+00:00"
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise InvalidSubscription(
                path, "expected an RFC 3339 date-time string", value
            ) from None
        if parsed.tzinfo is None:
            raise InvalidSubscription(path, "RFC 3339 date-time needs an offset or 'Z'", value)
        return parsed.astimezone(UTC)
    raise InvalidSubscription(path, "expected a datetime or an RFC 3339 string", value)


def _require_int(value: object, path: str, low: int, high: int | None = None) -> int:
    # bool is an int subclass; True as a number of seconds is always a mistake.
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidSubscription(path, "expected an integer", value)
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"between {low} and {high}"
        raise InvalidSubscription(path, f"must be {bound}", value)
    return value


def _require_str(value: object, path: str) -> str:
    if not isinstance(value, str):
        raise InvalidSubscription(path, "expected a string", value)
    return value


def _require_mapping(value: object, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidSubscription(path, "expected an object", value)
    for key in value:
        if not isinstance(key, str):
            raise InvalidSubscription(path, "object keys must be strings", key)
    return value


def _reject_unknown(data: Mapping[str, Any], allowed: frozenset[str], path: str) -> None:
    # A misspelt optional key ("catchup") silently ignored would change dispatch behaviour.
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise InvalidSubscription(_join(path, unknown[0]), "unknown field")


@dataclass(frozen=True)
class CronSchedule:
    """A 5-field cron expression evaluated in an IANA time zone.

    The constructor validates both, so an instance always has a usable ``zone``.
    """

    cron: str
    timezone: str = "UTC"

    def __post_init__(self) -> None:
        validate_cron(self.cron, "schedule.cron")
        zone_for(self.timezone, "schedule.timezone")

    @property
    def zone(self) -> ZoneInfo:
        """The :class:`~zoneinfo.ZoneInfo` for :attr:`timezone`."""
        return ZoneInfo(self.timezone)

    def to_document(self) -> dict[str, Any]:
        """The ``schedule`` object as stored (timezone always written, even when UTC)."""
        return {"cron": self.cron, "timezone": self.timezone}


@dataclass(frozen=True)
class EverySchedule:
    """A fixed interval in seconds (whole minutes), anchored at ``starts_at`` or the Unix epoch."""

    every: int

    def __post_init__(self) -> None:
        _require_int(self.every, "schedule.every", MIN_EVERY, MAX_EVERY)
        if self.every % 60:
            raise InvalidSubscription(
                "schedule.every", "must be a whole number of minutes (multiple of 60)", self.every
            )

    def to_document(self) -> dict[str, Any]:
        """The ``schedule`` object as stored."""
        return {"every": self.every}


#: A subscription's schedule: ``match`` on the two classes.
Schedule: TypeAlias = CronSchedule | EverySchedule


def validate_cron(expression: object, path: str = "cron") -> str:
    """Check that ``expression`` is a 5-field cron expression cronsim can evaluate."""
    text = _require_str(expression, path)
    if len(text.split()) != 5:
        raise InvalidSubscription(
            path, "expected 5 fields (minute hour day-of-month month day-of-week)", expression
        )
    try:
        CronSim(text, datetime(2000, 1, 1, tzinfo=UTC))
    except CronSimError as exc:
        raise InvalidSubscription(path, f"invalid cron expression: {exc}", expression) from None
    return text


def zone_for(name: object, path: str = "timezone") -> ZoneInfo:
    """The :class:`~zoneinfo.ZoneInfo` for an IANA name, or :class:`InvalidSubscription`."""
    text = _require_str(name, path)
    try:
        return ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidSubscription(path, "unknown IANA time zone", name) from None


def schedule_from_document(data: object, path: str = "schedule") -> Schedule:
    """Parse a ``schedule`` object: ``{"cron", "timezone"?}`` or ``{"every"}``."""
    mapping = _require_mapping(data, path)
    if "cron" in mapping and "every" in mapping:
        raise InvalidSubscription(path, "give either 'cron' or 'every', not both")
    if "cron" in mapping:
        _reject_unknown(mapping, frozenset({"cron", "timezone"}), path)
        cron = validate_cron(mapping["cron"], _join(path, "cron"))
        timezone = mapping.get("timezone", "UTC")
        zone_for(timezone, _join(path, "timezone"))
        return CronSchedule(cron=cron, timezone=timezone)
    if "every" in mapping:
        _reject_unknown(mapping, frozenset({"every"}), path)
        every = _require_int(mapping["every"], _join(path, "every"), MIN_EVERY, MAX_EVERY)
        if every % 60:
            raise InvalidSubscription(
                _join(path, "every"), "must be a whole number of minutes (multiple of 60)", every
            )
        return EverySchedule(every=every)
    raise InvalidSubscription(path, "needs 'cron' (with optional 'timezone') or 'every'")


@dataclass(frozen=True)
class Source:
    """One thing to collect: ``kind`` selects the Cloud Tasks queue, ``params`` go to collectors."""

    id: str
    kind: str
    params: Mapping[str, Any] = field(default_factory=dict, hash=False)

    @classmethod
    def from_document(cls, data: object, path: str = "source") -> Source:
        """Parse one entry of ``sources``."""
        mapping = _require_mapping(data, path)
        _reject_unknown(mapping, frozenset({"id", "kind", "params"}), path)
        if "id" not in mapping:
            raise InvalidSubscription(_join(path, "id"), "missing")
        if "kind" not in mapping:
            raise InvalidSubscription(_join(path, "kind"), "missing")
        source_id = _require_str(mapping["id"], _join(path, "id"))
        if not _SLUG.match(source_id):
            raise InvalidSubscription(
                _join(path, "id"),
                "must be 1-100 of a-z 0-9 _ -, starting and ending with a letter or digit",
                source_id,
            )
        kind = _require_str(mapping["kind"], _join(path, "kind"))
        if not _KIND.match(kind):
            raise InvalidSubscription(
                _join(path, "kind"), "must match ^[a-z][a-z0-9-]{0,62}$", kind
            )
        params = _require_mapping(mapping.get("params", {}), _join(path, "params"))
        return cls(id=source_id, kind=kind, params=dict(params))

    def to_document(self) -> dict[str, Any]:
        """The source as stored."""
        return {"id": self.id, "kind": self.kind, "params": dict(self.params)}


@dataclass(frozen=True)
class AfterRun:
    """A delivery sent after each completed collection run (chained on ``run-completed``)."""

    def to_document(self) -> dict[str, Any]:
        """The delivery's ``schedule`` object as stored."""
        return {"after": "run"}


#: When a delivery is sent: on its own cron schedule, or after each run.
DeliverySchedule: TypeAlias = CronSchedule | AfterRun


@dataclass(frozen=True)
class Delivery:
    """One declared delivery: an email ``format`` sent to every address in ``to``.

    Recipients keep the order and spelling given; they are unique ignoring case, because
    each recipient is part of a delivery key and one person must not get two copies.
    """

    id: str
    to: tuple[str, ...]
    schedule: DeliverySchedule
    format: DeliveryFormat
    channel: Literal["email"] = "email"

    @property
    def after_run(self) -> bool:
        """Whether the delivery is chained on run completion (not selected by the tick)."""
        return isinstance(self.schedule, AfterRun)

    @classmethod
    def from_document(cls, data: object, path: str = "delivery") -> Delivery:
        """Parse one entry of ``deliveries``."""
        mapping = _require_mapping(data, path)
        _reject_unknown(mapping, frozenset({"id", "channel", "to", "schedule", "format"}), path)
        for required in ("id", "channel", "to", "schedule", "format"):
            if required not in mapping:
                raise InvalidSubscription(_join(path, required), "missing")
        delivery_id = _require_str(mapping["id"], _join(path, "id"))
        if not _SLUG.match(delivery_id):
            raise InvalidSubscription(
                _join(path, "id"),
                "must be 1-100 of a-z 0-9 _ -, starting and ending with a letter or digit",
                delivery_id,
            )
        if mapping["channel"] != "email":
            raise InvalidSubscription(
                _join(path, "channel"), "must be 'email' (the only channel)", mapping["channel"]
            )
        delivery_format = mapping["format"]
        if delivery_format not in DELIVERY_FORMATS:
            raise InvalidSubscription(
                _join(path, "format"),
                f"must be one of {', '.join(DELIVERY_FORMATS)}",
                delivery_format,
            )
        return cls(
            id=delivery_id,
            to=_recipients(mapping["to"], _join(path, "to")),
            schedule=_delivery_schedule(mapping["schedule"], _join(path, "schedule")),
            format=delivery_format,
        )

    def to_document(self) -> dict[str, Any]:
        """The delivery as stored."""
        return {
            "id": self.id,
            "channel": self.channel,
            "to": list(self.to),
            "schedule": self.schedule.to_document(),
            "format": self.format,
        }


def _recipients(value: object, path: str) -> tuple[str, ...]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise InvalidSubscription(path, "expected a list of email addresses", value)
    if not 1 <= len(value) <= MAX_RECIPIENTS:
        raise InvalidSubscription(
            path, f"must hold 1 to {MAX_RECIPIENTS} addresses", f"{len(value)} addresses"
        )
    seen: dict[str, int] = {}
    for index, address in enumerate(value):
        where = _join(path, index)
        text = _require_str(address, where)
        if len(text) > MAX_EMAIL_LENGTH or not EMAIL.match(text):
            raise InvalidSubscription(where, "is not a bare email address (name@domain)", text)
        if text.lower() in seen:
            raise InvalidSubscription(
                where,
                f"duplicate recipient (also {path}[{seen[text.lower()]}], ignoring case)",
                text,
            )
        seen[text.lower()] = index
    return tuple(value)


def _delivery_schedule(value: object, path: str) -> DeliverySchedule:
    mapping = _require_mapping(value, path)
    if "after" in mapping:
        _reject_unknown(mapping, frozenset({"after"}), path)
        if mapping["after"] != "run":
            raise InvalidSubscription(_join(path, "after"), "must be 'run'", mapping["after"])
        return AfterRun()
    if "cron" in mapping:
        # Unlike the subscription's own schedule, the zone is required: a digest "at 08:00" in
        # UTC by accident is a wrong hour for every subscriber.
        _reject_unknown(mapping, frozenset({"cron", "timezone"}), path)
        if "timezone" not in mapping:
            raise InvalidSubscription(path, "needs 'timezone' beside 'cron' (an IANA zone name)")
        cron = validate_cron(mapping["cron"], _join(path, "cron"))
        zone_for(mapping["timezone"], _join(path, "timezone"))
        return CronSchedule(cron=cron, timezone=mapping["timezone"])
    raise InvalidSubscription(path, "needs {'cron', 'timezone'} or {'after': 'run'}")


def _deliveries_from_document(value: object) -> tuple[Delivery, ...]:
    return _items_with_unique_ids(
        value,
        "deliveries",
        "delivery",
        Delivery.from_document,
        allowed=range(MAX_DELIVERIES + 1),
        size_rule=f"must hold at most {MAX_DELIVERIES}",
    )


@dataclass(frozen=True)
class CatchUp:
    """What to do with slots missed while the dispatcher was down (see ``shared.scheduling``).

    ``window`` (seconds) bounds how old a missed slot may be and still be caught up;
    ``max_slots`` caps the catch-up slots of policy ``all`` in one tick (the newest are kept).
    """

    policy: CatchUpPolicy = "skip"
    window: int = DEFAULT_CATCH_UP_WINDOW
    max_slots: int = DEFAULT_CATCH_UP_MAX_SLOTS

    def __post_init__(self) -> None:
        if self.policy not in CATCH_UP_POLICIES:
            raise InvalidSubscription(
                "catch_up.policy", f"must be one of {', '.join(CATCH_UP_POLICIES)}", self.policy
            )
        _require_int(self.window, f"catch_up.{CATCH_UP_WINDOW_KEY}", 60, MAX_CATCH_UP_WINDOW)
        _require_int(self.max_slots, "catch_up.max_slots", 1, MAX_CATCH_UP_SLOTS)

    @classmethod
    def from_document(cls, data: object, path: str = "catch_up") -> CatchUp:
        """Parse ``catch_up``; ``policy`` is required, the rest default."""
        mapping = _require_mapping(data, path)
        _reject_unknown(mapping, frozenset({"policy", CATCH_UP_WINDOW_KEY, "max_slots"}), path)
        if "policy" not in mapping:
            raise InvalidSubscription(_join(path, "policy"), "missing")
        policy = mapping["policy"]
        if policy not in CATCH_UP_POLICIES:
            raise InvalidSubscription(
                _join(path, "policy"), f"must be one of {', '.join(CATCH_UP_POLICIES)}", policy
            )
        window = _require_int(
            mapping.get(CATCH_UP_WINDOW_KEY, DEFAULT_CATCH_UP_WINDOW),
            _join(path, CATCH_UP_WINDOW_KEY),
            60,
            MAX_CATCH_UP_WINDOW,
        )
        max_slots = _require_int(
            mapping.get("max_slots", DEFAULT_CATCH_UP_MAX_SLOTS),
            _join(path, "max_slots"),
            1,
            MAX_CATCH_UP_SLOTS,
        )
        return cls(policy=policy, window=window, max_slots=max_slots)

    def to_document(self) -> dict[str, Any]:
        """``catch_up`` as stored, defaults written out."""
        return {
            "policy": self.policy,
            CATCH_UP_WINDOW_KEY: self.window,
            "max_slots": self.max_slots,
        }


@dataclass(frozen=True)
class Subscription:
    """One subscription. Times are UTC-aware; system fields are ``None`` until the system sets them.

    ``catch_up`` is ``None`` when the document has none (the scheduler then uses policy ``skip``);
    ``jitter_seconds`` is ``None`` when the configured default applies.
    """

    id: str
    name: str
    schedule: Schedule
    sources: tuple[Source, ...]
    paused: bool = False
    status: Status = "active"
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    catch_up: CatchUp | None = None
    jitter_seconds: int | None = None
    next_run_at: datetime | None = None
    shard: int | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    deliveries: tuple[Delivery, ...] = ()

    def delivery(self, delivery_id: str) -> Delivery | None:
        """The declared delivery ``delivery_id``, or ``None``."""
        return next((d for d in self.deliveries if d.id == delivery_id), None)

    @property
    def effective_catch_up(self) -> CatchUp:
        """``catch_up``, or the default (policy ``skip``) when the document has none."""
        return self.catch_up if self.catch_up is not None else CatchUp()

    @classmethod
    def from_document(cls, doc_id: str, data: Mapping[str, Any]) -> Subscription:
        """Build a subscription from its document id and Firestore data (or parsed JSON/YAML).

        Raises :class:`InvalidSubscription` naming the first malformed field. Unknown fields
        are refused, like the schema does (``additionalProperties: false``).
        """
        if not isinstance(doc_id, str) or not _SLUG.match(doc_id):
            raise InvalidSubscription(
                "<id>",
                "document id must be 1-100 of a-z 0-9 _ -, starting and ending with a letter or"
                " digit",
                doc_id,
            )
        mapping = _require_mapping(data, "")
        _reject_unknown(mapping, _TOP_LEVEL_KEYS, "")
        for required in ("name", "schedule", "sources"):
            if required not in mapping:
                raise InvalidSubscription(required, "missing")

        name = _require_str(mapping["name"], "name")
        if not name.strip() or len(name) > MAX_NAME_LENGTH:
            raise InvalidSubscription(
                "name", f"must be 1-{MAX_NAME_LENGTH} characters, not blank", name
            )
        paused = mapping.get("paused", False)
        if not isinstance(paused, bool):
            raise InvalidSubscription("paused", "expected true or false", paused)
        status = mapping.get("status", "active")
        if status not in STATUSES:
            raise InvalidSubscription("status", "must be 'active' or 'expired'", status)

        schedule = schedule_from_document(mapping["schedule"], "schedule")
        sources = _sources_from_document(mapping["sources"])

        starts_at = _optional_instant(mapping, "starts_at")
        ends_at = _optional_instant(mapping, "ends_at")
        if starts_at is not None and ends_at is not None and ends_at <= starts_at:
            raise InvalidSubscription("ends_at", "must be after starts_at", mapping["ends_at"])

        catch_up = (
            CatchUp.from_document(mapping["catch_up"], "catch_up")
            if mapping.get("catch_up") is not None
            else None
        )
        deliveries = _deliveries_from_document(mapping.get("deliveries", []))
        jitter = mapping.get("jitter_seconds")
        if jitter is not None:
            jitter = _require_int(jitter, "jitter_seconds", 0, MAX_JITTER_SECONDS)
        shard = mapping.get("shard")
        if shard is not None:
            shard = _require_int(shard, "shard", 0)

        return cls(
            id=doc_id,
            name=name,
            schedule=schedule,
            sources=sources,
            paused=paused,
            status=status,
            starts_at=starts_at,
            ends_at=ends_at,
            catch_up=catch_up,
            jitter_seconds=jitter,
            next_run_at=_optional_instant(mapping, "next_run_at"),
            shard=shard,
            created_at=_optional_instant(mapping, "created_at"),
            updated_at=_optional_instant(mapping, "updated_at"),
            deliveries=deliveries,
        )

    def to_document(self, *, json_compatible: bool = False) -> dict[str, Any]:
        """The document data (without the id).

        Times are UTC ``datetime`` objects (Firestore stores them as timestamps), or RFC 3339
        strings with ``json_compatible=True``. Optional fields that are ``None`` are left out,
        except ``next_run_at``, which is written as ``null`` once the subscription has expired.
        """

        def instant(value: datetime) -> datetime | str:
            return format_instant(value) if json_compatible else value.astimezone(UTC)

        doc: dict[str, Any] = {
            "name": self.name,
            "paused": self.paused,
            "status": self.status,
            "schedule": self.schedule.to_document(),
            "sources": [source.to_document() for source in self.sources],
        }
        if self.starts_at is not None:
            doc["starts_at"] = instant(self.starts_at)
        if self.ends_at is not None:
            doc["ends_at"] = instant(self.ends_at)
        if self.catch_up is not None:
            doc["catch_up"] = self.catch_up.to_document()
        if self.deliveries:
            doc["deliveries"] = [delivery.to_document() for delivery in self.deliveries]
        if self.jitter_seconds is not None:
            doc["jitter_seconds"] = self.jitter_seconds
        if self.next_run_at is not None:
            doc["next_run_at"] = instant(self.next_run_at)
        elif self.status == "expired":
            doc["next_run_at"] = None
        if self.shard is not None:
            doc["shard"] = self.shard
        if self.created_at is not None:
            doc["created_at"] = instant(self.created_at)
        if self.updated_at is not None:
            doc["updated_at"] = instant(self.updated_at)
        return doc


def _optional_instant(mapping: Mapping[str, Any], key: str) -> datetime | None:
    value = mapping.get(key)
    return None if value is None else parse_instant(value, key)


def _sources_from_document(value: object) -> tuple[Source, ...]:
    return _items_with_unique_ids(
        value,
        "sources",
        "source",
        Source.from_document,
        allowed=range(1, MAX_SOURCES + 1),
        size_rule=f"must hold 1 to {MAX_SOURCES} sources",
    )


class _HasId(Protocol):
    @property
    def id(self) -> str: ...


_Item = TypeVar("_Item", bound=_HasId)


def _items_with_unique_ids(
    value: object,
    field_name: str,
    noun: str,
    parse: Callable[[object, str], _Item],
    *,
    allowed: range,
    size_rule: str,
) -> tuple[_Item, ...]:
    """A document list (sources, deliveries) parsed item by item, its size and ids checked."""
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise InvalidSubscription(field_name, "expected a list", value)
    if len(value) not in allowed:
        raise InvalidSubscription(field_name, size_rule, f"{len(value)} {field_name}")
    items: list[_Item] = []
    seen: dict[str, int] = {}
    for index, item in enumerate(value):
        path = _join(field_name, index)
        parsed = parse(item, path)
        if parsed.id in seen:
            raise InvalidSubscription(
                _join(path, "id"),
                f"duplicate {noun} id (also {field_name}[{seen[parsed.id]}])",
                parsed.id,
            )
        seen[parsed.id] = index
        items.append(parsed)
    return tuple(items)


def shard_for(subscription_id: str, shard_count: int) -> int:
    """The shard of a subscription: stable across processes, releases and machines.

    The first 8 bytes of SHA-256 of the UTF-8 id, modulo ``shard_count`` (Python's ``hash()`` is
    salted per process, so it cannot be used).
    """
    if isinstance(shard_count, bool) or not isinstance(shard_count, int) or shard_count < 1:
        raise ValueError(f"shard_count must be a positive integer, got {shard_count!r}")
    digest = hashlib.sha256(subscription_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % shard_count
