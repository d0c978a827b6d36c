"""``dispatcher deliveries list|show`` on a real ledger: what an operator sees at 3 a.m."""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from typer.testing import CliRunner

from shared import contracts
from shared.cli.app import app
from shared.config import get_settings
from shared.delivery_key import DeliveryKey, email_task_id, message_id
from shared.ledger.deliveries import EmailLedger, EmailSpec
from shared.ledger.repository import Ledger

pytestmark = pytest.mark.integration

SLOT = datetime(2026, 3, 9, 11, 45, tzinfo=UTC)


@pytest.fixture
def emails(
    ledger: Ledger, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[EmailLedger]:
    monkeypatch.setenv("DATABASE_URL", database_url)
    get_settings.cache_clear()
    yield EmailLedger(ledger.pool)
    get_settings.cache_clear()


def _spec(recipient: str) -> EmailSpec:
    key = DeliveryKey("acme", "alert", SLOT, recipient)
    return EmailSpec(
        key,
        "alert",
        f"q/tasks/{email_task_id(key)}",
        "email-deliveries",
        message_id(key, "dispatcher.invalid"),
        run_id=3,
    )


def test_list_and_show_with_a_replay_command_the_deliver_function_accepts(
    emails: EmailLedger,
) -> None:
    emails.claim(_spec("a@acme.example"))
    emails.begin_send(_spec("b@acme.example"))
    emails.mark_failed(_spec("b@acme.example").key, 1, "DATA refused: 550 5.7.1 spam")
    runner = CliRunner()
    listed = runner.invoke(app, ["deliveries", "list", "acme", "--json"])
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)
    assert [(r["recipient"], r["state"]) for r in rows] == [
        ("a@acme.example", "queued"),
        ("b@acme.example", "failed"),
    ]
    failed = runner.invoke(app, ["deliveries", "list", "--state", "failed"])
    assert failed.exit_code == 0 and "550 5.7.1 spam" in failed.stdout
    assert "a@acme.example" not in failed.stdout
    bad = runner.invoke(app, ["deliveries", "list", "--state", "lost"])
    assert bad.exit_code == 2
    shown = runner.invoke(app, ["deliveries", "show", str(rows[0]["id"]), "--json"])
    assert shown.exit_code == 0, shown.output
    detail = json.loads(shown.stdout)
    assert detail["message_id"] == _spec("a@acme.example").message_id
    replay = shlex.split(detail["replay"])
    assert replay[:3] == ["gcloud", "tasks", "create-http-task"]
    assert "--queue=email-deliveries" in replay
    body = json.loads(next(a for a in replay if a.startswith("--body-content=")).split("=", 1)[1])
    contracts.validate("email-task", body)
    assert body["delivery_key"]["recipient"] == "a@acme.example" and body["run_id"] == 3
    missing = runner.invoke(app, ["deliveries", "show", "999"])
    # CliError: `dispatcher` (shared.cli.app.main) prints it as one line and exits 1.
    assert missing.exit_code == 1 and str(missing.exception) == "no email delivery with id 999"
