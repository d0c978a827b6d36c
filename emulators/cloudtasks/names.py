"""Resource-name grammar of Cloud Tasks v2, as the production API documents it.

- ``PROJECT_ID``: letters, digits, hyphens, colons or periods.
- ``LOCATION_ID``: letters, digits, hyphens (any such id, not only real regions).
- ``QUEUE_ID``: letters, digits, hyphens; at most 100 characters.
- ``TASK_ID``: letters, digits, hyphens, underscores; at most 500 characters.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from emulators.cloudtasks.errors import invalid

_PROJECT = r"[A-Za-z0-9:.\-]+"
_LOCATION = r"[A-Za-z0-9\-]+"
_QUEUE = r"[A-Za-z0-9\-]{1,100}"
_TASK = r"[A-Za-z0-9_\-]{1,500}"

LOCATION_RE = re.compile(rf"^projects/({_PROJECT})/locations/({_LOCATION})$")
QUEUE_RE = re.compile(rf"^(projects/{_PROJECT}/locations/{_LOCATION})/queues/({_QUEUE})$")
TASK_RE = re.compile(
    rf"^(projects/{_PROJECT}/locations/{_LOCATION}/queues/{_QUEUE})/tasks/({_TASK})$"
)
TASK_ID_RE = re.compile(rf"^{_TASK}$")


class QueueName(NamedTuple):
    parent: str
    queue_id: str


class TaskName(NamedTuple):
    queue: str
    task_id: str


def parse_location(name: str) -> str:
    """Validate ``projects/P/locations/L`` and return it unchanged."""
    if not LOCATION_RE.match(name):
        raise invalid(f"Invalid resource field value in the request: parent {name!r}")
    return name


def parse_queue(name: str) -> QueueName:
    """Split a full queue name; INVALID_ARGUMENT when it does not follow the grammar."""
    match = QUEUE_RE.match(name)
    if not match:
        raise invalid(
            f"Invalid queue name {name!r}: expected projects/PROJECT_ID/locations/LOCATION_ID/"
            "queues/QUEUE_ID, QUEUE_ID of letters, digits or hyphens, at most 100 characters"
        )
    return QueueName(match.group(1), match.group(2))


def parse_task(name: str) -> TaskName:
    """Split a full task name; INVALID_ARGUMENT when it does not follow the grammar."""
    match = TASK_RE.match(name)
    if not match:
        raise invalid(
            f"Invalid task name {name!r}: expected projects/PROJECT_ID/locations/LOCATION_ID/"
            "queues/QUEUE_ID/tasks/TASK_ID, TASK_ID of letters, digits, hyphens or "
            "underscores, at most 500 characters"
        )
    return TaskName(match.group(1), match.group(2))


def short_id(name: str) -> str:
    """The last path segment: the queue id of a queue name, the task id of a task name."""
    return name.rsplit("/", 1)[-1]
