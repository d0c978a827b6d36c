"""Test doubles shared by the test-only function file and the tests: a use case that records what
it was given (and can be told to fail) and a dead-letter publisher that records what it got."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.deadletter import DeadLetter
from shared.envelope import PushMessage


@dataclass
class UseCaseRecorder:
    """Records every call; raises ``error`` when set."""

    calls: list[tuple[str, dict[str, Any], PushMessage]] = field(default_factory=list)
    error: BaseException | None = None

    def reset(self) -> None:
        self.calls.clear()
        self.error = None

    def for_topic(self, topic: str) -> Any:
        def use_case(payload: dict[str, Any], message: PushMessage) -> None:
            self.calls.append((topic, payload, message))
            if self.error is not None:
                raise self.error

        return use_case


@dataclass
class RecordingDeadLetters:
    """A :class:`shared.deadletter.DeadLetterPublisher` that keeps what it was asked to publish."""

    published: list[DeadLetter] = field(default_factory=list)
    error: Exception | None = None
    attempts: int = 0

    def reset(self) -> None:
        self.published.clear()
        self.error = None
        self.attempts = 0

    def publish(self, topic: str, data: bytes, attributes: Mapping[str, str]) -> str:
        self.attempts += 1
        if self.error is not None:
            raise self.error
        self.published.append(DeadLetter(topic=topic, data=data, attributes=dict(attributes)))
        return f"dlq-{len(self.published)}"


USE_CASES = UseCaseRecorder()
DEAD_LETTERS = RecordingDeadLetters()
