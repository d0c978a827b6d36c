"""The worker kit driven through a real Flask app, as a collector service runs it."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from emulators.cloudtasks.oidc import TokenSigner
from shared.worker import CollectorTask, CollectResult, PermanentCollectError
from shared.worker.reporter import result_contract
from shared.worker.task import RetryableCollectError
from tests.support.certs import CertServer
from tests.unit.worker.conftest import (
    SLOT,
    SOURCE,
    SUBSCRIPTION,
    TASK_NAME,
    Kit,
    make_kit,
    subscription,
    task_body,
)

KEY = {"subscription_id": SUBSCRIPTION, "slot": SLOT, "source_id": SOURCE}


def decisions(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "shared.worker.kit"]


def only_decision(caplog: pytest.LogCaptureFixture) -> dict[str, Any]:
    records = decisions(caplog)
    assert len(records) == 1, [r.getMessage() for r in records]
    return vars(records[0])


def test_a_valid_task_is_collected_and_reported_succeeded_once(
    kit: Kit, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    response = kit.post()
    assert response.status_code == 200
    assert response.get_json() == {
        "decision": "succeeded",
        "outcome": "succeeded",
        "dispatch_key": KEY,
    }
    (task,) = kit.collector.calls
    assert isinstance(task, CollectorTask)
    assert (task.key.subscription_id, task.key.slot_text, task.key.source_id) == (
        SUBSCRIPTION,
        SLOT,
        SOURCE,
    )
    assert task.source.params == {"url": "https://example.com/f.xml"}
    assert task.scheduled and task.attempt == 1 and task.run_id == 42
    assert task.headers.queue_name == "collect-rss"
    (message,) = kit.publisher.messages
    payload = json.loads(message.data)
    result_contract().validate(payload)
    assert payload == {
        "dispatch_key": KEY,
        "outcome": "succeeded",
        "attempt": 1,
        "task_name": TASK_NAME,
        "items": 7,
        "duration_ms": payload["duration_ms"],
        "reported_at": "2026-01-05T09:00:07Z",
    }
    assert dict(message.attributes) == {
        "subscription_id": SUBSCRIPTION,
        "source_id": SOURCE,
        "outcome": "succeeded",
    }
    line = only_decision(caplog)
    assert (line["decision"], line["outcome"], line["status"]) == ("succeeded", "succeeded", 200)
    assert (line["subscription_id"], line["slot"], line["source_id"]) == (
        SUBSCRIPTION,
        SLOT,
        SOURCE,
    )
    assert (line["task_name"], line["attempt"]) == (TASK_NAME, 1)
    assert line["auth"]["verified"] is True


def test_an_already_succeeded_dispatch_returns_at_once_without_a_message(
    kit: Kit, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    kit.ledger.succeeded.add((SUBSCRIPTION, SLOT, SOURCE))
    response = kit.post()
    assert response.status_code == 200
    assert response.get_json()["decision"] == "already-succeeded"
    assert kit.collector.calls == []
    assert kit.publisher.messages == []
    assert only_decision(caplog)["ledger_check"] == "succeeded"


def test_an_unreadable_ledger_does_not_stop_collection(
    kit: Kit, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    kit.ledger.down = True
    response = kit.post()
    assert response.status_code == 200
    assert len(kit.collector.calls) == 1
    assert [p["outcome"] for p in kit.publisher.payloads] == ["succeeded"]
    assert only_decision(caplog)["ledger_check"].startswith("unavailable")


@pytest.mark.parametrize("reason", ["schedule", "catch-up"])
def test_a_paused_subscription_skips_its_scheduled_runs(kit: Kit, reason: str) -> None:
    kit.subscriptions.docs[SUBSCRIPTION] = subscription(paused=True)
    response = kit.post(task_body(reason))
    assert response.status_code == 200
    assert kit.collector.calls == []
    (payload,) = kit.publisher.payloads
    assert (payload["outcome"], payload["error"]) == ("skipped", "paused")
    assert "final" not in payload  # skipped is final by itself


@pytest.mark.parametrize("reason", ["manual", "replay"])
def test_a_paused_subscription_still_collects_a_run_asked_for_by_hand(
    kit: Kit, reason: str
) -> None:
    # fanout dispatches these on purpose (pausing stops the schedule, not the operator).
    kit.subscriptions.docs[SUBSCRIPTION] = subscription(paused=True)
    response = kit.post(task_body(reason))
    assert response.status_code == 200
    assert len(kit.collector.calls) == 1
    assert [p["outcome"] for p in kit.publisher.payloads] == ["succeeded"]


def test_a_deleted_subscription_is_skipped(kit: Kit) -> None:
    del kit.subscriptions.docs[SUBSCRIPTION]
    assert kit.post().status_code == 200
    assert kit.collector.calls == []
    assert [(p["outcome"], p["error"]) for p in kit.publisher.payloads] == [("skipped", "deleted")]


def test_a_source_removed_since_the_dispatch_is_skipped(kit: Kit) -> None:
    kit.subscriptions.docs[SUBSCRIPTION] = subscription(
        sources=[{"id": "other-feed", "kind": "rss", "params": {}}]
    )
    assert kit.post().status_code == 200
    assert kit.collector.calls == []
    assert [(p["outcome"], p["error"]) for p in kit.publisher.payloads] == [
        ("skipped", "source removed from subscription")
    ]


def test_an_expired_subscription_skips_a_manual_run(kit: Kit) -> None:
    kit.subscriptions.docs[SUBSCRIPTION] = subscription(status="expired")
    assert kit.post(task_body("manual")).status_code == 200
    assert kit.collector.calls == []
    assert [(p["outcome"], p["error"]) for p in kit.publisher.payloads] == [("skipped", "expired")]


def test_a_slot_at_or_after_ends_at_is_skipped_whatever_the_reason(kit: Kit) -> None:
    kit.subscriptions.docs[SUBSCRIPTION] = subscription(
        status="expired", ends_at="2026-01-05T09:00:00Z"
    )
    assert kit.post(task_body("schedule")).status_code == 200
    assert kit.collector.calls == []
    assert [(p["outcome"], p["error"]) for p in kit.publisher.payloads] == [
        ("skipped", "slot at or after ends_at")
    ]


def test_an_expired_subscription_still_collects_its_last_scheduled_slot(kit: Kit) -> None:
    # select marks the subscription expired right after publishing its last slot (fanout's rule).
    kit.subscriptions.docs[SUBSCRIPTION] = subscription(
        status="expired", ends_at="2026-01-05T09:01:00Z"
    )
    assert kit.post(task_body("schedule")).status_code == 200
    assert len(kit.collector.calls) == 1


def test_a_malformed_subscription_document_fails_for_good(kit: Kit) -> None:
    kit.subscriptions.docs[SUBSCRIPTION] = {"name": "broken", "schedule": {"every": "soon"}}
    assert kit.post().status_code == 200
    assert kit.collector.calls == []
    (payload,) = kit.publisher.payloads
    assert (payload["outcome"], payload["final"]) == ("failed", True)
    assert payload["error"].startswith("subscription document is invalid")


def test_an_unreadable_subscription_fails_the_attempt_for_a_retry(kit: Kit) -> None:
    kit.subscriptions.down = True
    assert kit.post().status_code == 503
    assert kit.collector.calls == []
    (payload,) = kit.publisher.payloads
    assert payload["outcome"] == "failed" and "final" not in payload


def test_a_collect_function_that_raises_reports_failed_and_answers_503(
    kit: Kit, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)

    def broken(task: CollectorTask) -> CollectResult:
        raise ConnectionResetError("feed closed the connection")

    kit.collector.behaviour = broken
    response = kit.post(retry_count=2)
    assert response.status_code == 503
    (payload,) = kit.publisher.payloads
    assert payload["outcome"] == "failed" and "final" not in payload
    assert payload["attempt"] == 3
    assert payload["error"] == "ConnectionResetError: feed closed the connection"
    line = only_decision(caplog)
    assert line["levelname"] == "ERROR" and line["exc_info"] is not None


def test_a_permanent_collect_error_is_final_and_answers_200(kit: Kit) -> None:
    def gone(task: CollectorTask) -> CollectResult:
        raise PermanentCollectError("feed answered 410 Gone")

    kit.collector.behaviour = gone
    response = kit.post()
    assert response.status_code == 200
    (payload,) = kit.publisher.payloads
    assert (payload["outcome"], payload["final"]) == ("failed", True)
    assert payload["error"] == "PermanentCollectError: feed answered 410 Gone"


def test_a_retryable_collect_error_answers_its_own_status(kit: Kit) -> None:
    def throttled(task: CollectorTask) -> CollectResult:
        raise RetryableCollectError("rate limited by the API", status=429)

    kit.collector.behaviour = throttled
    assert kit.post().status_code == 429
    assert [p["outcome"] for p in kit.publisher.payloads] == ["failed"]


def test_a_collect_function_returning_none_succeeds_without_a_count(kit: Kit) -> None:
    kit.collector.behaviour = lambda task: None
    assert kit.post().status_code == 200
    (payload,) = kit.publisher.payloads
    assert payload["outcome"] == "succeeded" and "items" not in payload


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (None, "no Authorization header"),
        ("Bearer not-a-jwt", "malformed token"),
        ("intruder", "token is for 'intruder@"),
        ("other-audience", "invalid token"),
    ],
)
def test_a_bad_token_is_refused_with_401_and_nothing_happens(
    kit: Kit, signer: TokenSigner, caplog: pytest.LogCaptureFixture, token: str | None, reason: str
) -> None:
    caplog.set_level(logging.INFO)
    if token == "intruder":
        token = "Bearer " + signer.token(
            "intruder@dispatcher-test.iam.gserviceaccount.com", "http://localhost/collect"
        )
    elif token == "other-audience":
        token = "Bearer " + signer.token(
            "collector-invoker@dispatcher-test.iam.gserviceaccount.com", "https://elsewhere/"
        )
    response = kit.post(token=token)
    assert response.status_code == 401
    assert kit.collector.calls == []
    assert kit.publisher.messages == []
    assert kit.ledger.reads == 0
    line = only_decision(caplog)
    assert line["decision"] == "unauthorized"
    assert line["auth"]["verified"] is False and reason in line["auth"]["reason"]


def test_an_invalid_body_with_a_readable_key_is_reported_failed_for_good(
    kit: Kit, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    response = kit.post(task_body(reason="whenever"))
    assert response.status_code == 200
    assert kit.collector.calls == []
    (payload,) = kit.publisher.payloads
    assert (payload["dispatch_key"], payload["outcome"], payload["final"]) == (KEY, "failed", True)
    assert "$.reason" in payload["error"] and "enum" in payload["error"]
    line = only_decision(caplog)
    assert line["levelname"] == "ERROR"
    assert (line["invalid_path"], line["invalid_rule"]) == ("$.reason", "enum")


def test_an_inconsistent_body_is_invalid_too(kit: Kit) -> None:
    body = task_body()
    body["source"]["id"] = "another-source"
    assert kit.post(body).status_code == 200
    (payload,) = kit.publisher.payloads
    assert payload["outcome"] == "failed" and "x-consistency" in payload["error"]


@pytest.mark.parametrize(
    ("raw", "rule"),
    [
        (b"{}", "required"),
        (b"not json", "JsonDecodeError"),
        (b"", "JsonDecodeError"),
        (json.dumps(task_body(dispatch_key={"subscription_id": "Bad Id"})).encode(), "required"),
    ],
)
def test_an_invalid_body_without_a_usable_key_answers_400(
    kit: Kit, caplog: pytest.LogCaptureFixture, raw: bytes, rule: str
) -> None:
    caplog.set_level(logging.INFO)
    response = kit.post(raw=raw)
    assert response.status_code == 400
    assert kit.collector.calls == []
    assert kit.publisher.messages == []
    line = only_decision(caplog)
    assert line["levelname"] == "ERROR" and line["invalid_rule"] == rule
    assert "invalid_path" in line


def test_a_failed_publish_answers_503_so_the_task_is_retried(
    kit: Kit, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    kit.publisher.failures = 1
    response = kit.post()
    assert response.status_code == 503
    # The collection ran; its retry collects again (documented: collection is idempotent).
    assert len(kit.collector.calls) == 1
    assert kit.publisher.messages == []
    line = only_decision(caplog)
    assert (line["decision"], line["unpublished_outcome"]) == ("publish-failed", "succeeded")
    response = kit.post(retry_count=1)
    assert response.status_code == 200
    assert [(p["outcome"], p["attempt"]) for p in kit.publisher.payloads] == [("succeeded", 2)]


def test_a_failed_publish_of_an_invalid_body_report_answers_503(kit: Kit) -> None:
    kit.publisher.failures = 1
    assert kit.post(task_body(reason="whenever")).status_code == 503


def test_the_attempt_comes_from_the_retry_count_header(kit: Kit) -> None:
    kit.post(retry_count=4)
    kit.post(retry_count=None)  # a request sent by hand: attempt 1
    assert [p["attempt"] for p in kit.publisher.payloads] == [5, 1]
    assert [t.attempt for t in kit.collector.calls] == [5, 1]


def test_started_is_not_reported_by_default(kit: Kit) -> None:
    kit.post()
    assert [p["outcome"] for p in kit.publisher.payloads] == ["succeeded"]


def test_started_is_reported_before_collection_when_enabled(
    signer: TokenSigner, certs: CertServer
) -> None:
    kit = make_kit(signer, certs.url, report_started=True)
    seen_at_collection: list[int] = []

    def collect(task: CollectorTask) -> CollectResult:
        seen_at_collection.append(len(kit.publisher.messages))
        return CollectResult(1)

    kit.collector.behaviour = collect
    assert kit.post(retry_count=1).status_code == 200
    assert [(p["outcome"], p["attempt"]) for p in kit.publisher.payloads] == [
        ("started", 2),
        ("succeeded", 2),
    ]
    assert seen_at_collection == [1]


def test_a_failed_started_publish_answers_503_before_collecting(
    signer: TokenSigner, certs: CertServer
) -> None:
    kit = make_kit(signer, certs.url, report_started=True)
    kit.publisher.failures = 1
    assert kit.post().status_code == 503
    assert kit.collector.calls == []


def test_the_configuration_is_built_once_on_the_first_request(kit: Kit) -> None:
    assert kit.configs == []  # nothing at decoration time
    kit.post()
    kit.post()
    assert len(kit.configs) == 1
