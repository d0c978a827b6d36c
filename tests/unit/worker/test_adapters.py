"""The real adapters' failure modes: they must surface as retryable errors, never as crashes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from shared.dal.records import OutboundMessage
from shared.dispatch_key import DispatchKey
from shared.errors import DependencyUnavailableError, RetryableError, SchemaValidationError
from shared.worker import LedgerSucceededCheck, OutcomeReport, PubSubResultPublisher, build_result


def test_an_unreachable_ledger_is_a_retryable_error() -> None:
    # Port 1 on loopback refuses at once; the pool gives up after its timeout.
    check = LedgerSucceededCheck("postgresql://nobody@127.0.0.1:1/none", timeout=0.5)
    try:
        with pytest.raises(DependencyUnavailableError, match="postgresql"):
            check.already_succeeded(
                DispatchKey("acme-news", datetime(2026, 1, 5, 9, tzinfo=UTC), "feed")
            )
    finally:
        check.close()


def test_a_publisher_client_that_cannot_be_built_is_a_retryable_error() -> None:
    def no_credentials() -> Any:
        raise RuntimeError("Your default credentials were not found")

    publisher = PubSubResultPublisher(no_credentials, "projects/p/topics/t", timeout=1)
    with pytest.raises(RetryableError, match="default credentials"):
        publisher.publish(OutboundMessage(b"{}"))


def test_a_report_with_a_broken_key_is_refused_before_it_leaves() -> None:
    report = OutcomeReport({"subscription_id": "Not An Id"}, "failed", attempt=1)
    with pytest.raises(SchemaValidationError, match=r"result\.v1\.json"):
        build_result(report)
