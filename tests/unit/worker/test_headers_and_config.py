"""The X-CloudTasks-* headers and the kit's configuration."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from shared.config import ConfigError, load_settings
from shared.worker import RESULTS_TOPIC, TaskHeaders, WorkerConfig, WorkerEnv, load_worker_config
from shared.worker.headers import MAX_ATTEMPT


def test_headers_are_read_in_any_case() -> None:
    headers = TaskHeaders.from_mapping(
        {
            "X-CloudTasks-TaskName": "abc-def",
            "x-cloudtasks-queuename": "collect-rss",
            "X-CLOUDTASKS-TASKRETRYCOUNT": "3",
            "X-CloudTasks-TaskExecutionCount": "2",
            "X-CloudTasks-TaskETA": "1767603600.5",
            "X-CloudTasks-TaskPreviousResponse": "503",
        }
    )
    assert headers == TaskHeaders(
        task_name="abc-def",
        queue_name="collect-rss",
        retry_count=3,
        execution_count=2,
        eta=datetime(2026, 1, 5, 9, 0, 0, 500000, tzinfo=UTC),
        previous_response=503,
    )
    assert headers.attempt == 4


def test_missing_or_malformed_headers_read_as_a_first_attempt() -> None:
    headers = TaskHeaders.from_mapping(
        {"X-CloudTasks-TaskRetryCount": "-1", "X-CloudTasks-TaskETA": "soon"}
    )
    assert headers == TaskHeaders()
    assert headers.attempt == 1
    assert TaskHeaders.from_mapping({}).attempt == 1


def test_the_attempt_is_capped_at_what_the_result_contract_allows() -> None:
    headers = TaskHeaders.from_mapping({"X-CloudTasks-TaskRetryCount": str(10**9)})
    assert headers.attempt == MAX_ATTEMPT


def test_the_configuration_defaults_to_the_dispatcher_settings() -> None:
    env = {
        "GOOGLE_CLOUD_PROJECT": "p1",
        "DISPATCHER_OIDC_CERTS_URL": "http://127.0.0.1:1/certs",
        "DATABASE_URL": "postgresql://x@127.0.0.1/d",
    }
    config = load_worker_config(env)
    settings = load_settings(env)
    assert config.project == "p1"
    assert config.service_account == settings.collector_service_account
    assert config.certs_url == "http://127.0.0.1:1/certs"
    assert config.database_url == "postgresql://x@127.0.0.1/d"
    assert config.results_topic_path == f"projects/p1/topics/{RESULTS_TOPIC}"
    assert config.verify_token and not config.report_started and config.audience is None


def test_worker_variables_and_explicit_arguments_win() -> None:
    env = {
        WorkerEnv.AUDIENCE: "https://collector.example.run.app/collect",
        WorkerEnv.SERVICE_ACCOUNT: "tasks@p.iam.gserviceaccount.com",
        WorkerEnv.REPORT_STARTED: "true",
        WorkerEnv.RESULTS_TOPIC: "other-results",
    }
    config = load_worker_config(env, verify_token=False)
    assert config.audience == "https://collector.example.run.app/collect"
    assert config.service_account == "tasks@p.iam.gserviceaccount.com"
    assert config.report_started and not config.verify_token
    assert config.results_topic == "other-results"
    assert isinstance(config, WorkerConfig)


def test_a_flag_that_is_neither_true_nor_false_is_refused() -> None:
    with pytest.raises(ConfigError, match=WorkerEnv.REPORT_STARTED):
        load_worker_config({WorkerEnv.REPORT_STARTED: "maybe"})
