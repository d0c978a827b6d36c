"""Typed configuration: app.toml < app.<env>.toml < environment, one clear error per mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.config import ConfigError, load_settings
from shared.paths import project_root
from tests.unit.deploy.hcl import tfvars


def test_the_shipped_files_parse_for_every_environment() -> None:
    local = load_settings(environ={})
    assert local.environment == "local" and local.project == "dispatcher-local"
    assert {"rss", "news-api", "social", "email-digest"} <= set(local.queues)
    for env in ("staging", "production"):
        settings = load_settings(environ={"DISPATCHER_ENV": env})
        assert settings.project == f"dispatcher-{env}"
        assert settings.push_auth_verify, f"{env} must verify push tokens"
    production = load_settings(environ={"DISPATCHER_ENV": "production"})
    # The overlay changes one queue's limits and keeps the rest of its base entry.
    assert production.queues["rss"].max_dispatches_per_second == 200.0
    assert production.queues["rss"].name == local.queues["rss"].name


def test_environment_variables_win_over_the_files() -> None:
    settings = load_settings(
        environ={
            "GOOGLE_CLOUD_PROJECT": "elsewhere",
            "COLLECTOR_URL": "http://collector.test/collect",
            "DATABASE_URL": "postgresql://u@h/db",
            "DISPATCHER_DEPENDENCY_TIMEOUT_SECONDS": "1.5",
            "DISPATCHER_DEPENDENCY_RETRY_BUDGET_SECONDS": "3",
            "DISPATCHER_PUSH_AUTH_VERIFY": "true",
        }
    )
    assert settings.project == "elsewhere"
    assert settings.collector_url_for("rss") == "http://collector.test/collect"
    assert settings.database_url == "postgresql://u@h/db"
    assert (settings.dependency_timeout_seconds, settings.dependency_retry_budget_seconds) == (
        1.5,
        3.0,
    )
    assert settings.push_auth_verify
    assert settings.queue_path("rss") == (
        "projects/elsewhere/locations/europe-west1/queues/collect-rss"
    )


def test_an_unknown_source_kind_names_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"no queue configured for source kind 'fax'.*rss"):
        load_settings(environ={}).queue_for("fax")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[dispatcher\n", "app.toml"),
        ("[collector]\nurl = 'x'\nservice_account = 'y'\n", r"\[dispatcher\] section is missing"),
    ],
)
def test_broken_files_give_one_clear_error(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "app.toml").write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_settings(environ={}, config_dir=tmp_path)


def test_a_missing_environment_overlay_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "app.toml").write_text((project_root() / "app.toml").read_text())
    with pytest.raises(ConfigError, match=r"app\.qa\.toml does not exist"):
        load_settings(environ={"DISPATCHER_ENV": "qa"}, config_dir=tmp_path)


def test_out_of_range_values_name_their_key(tmp_path: Path) -> None:
    text = (project_root() / "app.toml").read_text().replace("shard_count = 16", "shard_count = 0")
    (tmp_path / "app.toml").write_text(text)
    with pytest.raises(ConfigError, match=r"dispatcher\.shard_count: 0 is outside 1\.\.1024"):
        load_settings(environ={}, config_dir=tmp_path)


def test_the_tick_skew_comes_from_app_toml_and_the_environment_wins() -> None:
    assert load_settings(environ={}).max_tick_skew_seconds == 300.0
    settings = load_settings(environ={"DISPATCHER_MAX_TICK_SKEW_SECONDS": "60"})
    assert settings.max_tick_skew_seconds == 60.0
    with pytest.raises(ConfigError, match="max_tick_skew_seconds"):
        load_settings(environ={"DISPATCHER_MAX_TICK_SKEW_SECONDS": "-1"})


# --- queue shards -------------------------------------------------------------------------------


def _with_queue(tmp_path: Path, extra: str) -> Path:
    base = (project_root() / "app.toml").read_text()
    (tmp_path / "app.toml").write_text(base + "\n" + extra)
    return tmp_path


_BIG = """
[queues.firehose]
name = "collect-firehose"
max_dispatches_per_second = 1200.0
max_concurrent_dispatches = 3000
max_attempts = 3
min_backoff_seconds = 5.0
max_backoff_seconds = 60.0
max_doublings = 2
"""


def test_shards_split_the_kinds_limits_and_shard_zero_keeps_the_queue_name(
    tmp_path: Path,
) -> None:
    settings = load_settings(environ={}, config_dir=_with_queue(tmp_path, _BIG + "shards = 3\n"))
    queue = settings.queues["firehose"]
    assert queue.shard_names() == ["collect-firehose", "collect-firehose-1", "collect-firehose-2"]
    assert queue.shard_rate() == 400.0
    assert queue.shard_concurrency() == 1000
    assert [p.rsplit("/", 1)[-1] for p in settings.queue_paths("firehose")] == queue.shard_names()
    assert settings.queue_path("firehose") == settings.queue_paths("firehose")[0]
    # Unsharded kinds are exactly what they were: one queue under its name, the limits whole.
    rss = settings.queues["rss"]
    assert rss.shards == 1 and settings.queue_paths("rss") == [settings.queue_path("rss")]
    assert rss.shard_rate() == rss.max_dispatches_per_second


def test_a_key_always_lands_on_the_same_shard_queue(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from shared.dispatch_key import DispatchKey, shard_of

    settings = load_settings(environ={}, config_dir=_with_queue(tmp_path, _BIG + "shards = 3\n"))
    slot = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
    used = set()
    for i in range(60):
        key = DispatchKey(f"sub-{i}", slot, "src")
        path = settings.queue_path_for("firehose", key)
        assert path == settings.queue_path("firehose", shard_of(key, 3))
        assert path == settings.queue_path_for("firehose", key)
        used.add(path)
    assert used == set(settings.queue_paths("firehose"))


def test_a_shard_above_500_per_second_names_the_shards_needed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"queues.firehose.*600/s per queue.*shards = 3"):
        load_settings(environ={}, config_dir=_with_queue(tmp_path, _BIG + "shards = 2\n"))
    crowded = _BIG.replace("3000", "18000") + "shards = 3\n"
    with pytest.raises(ConfigError, match=r"max_concurrent_dispatches: 18000.*shards = 4"):
        load_settings(environ={}, config_dir=_with_queue(tmp_path, crowded))
    with pytest.raises(ConfigError, match=r"queues.firehose.shards: 0"):
        load_settings(environ={}, config_dir=_with_queue(tmp_path, _BIG + "shards = 0\n"))


def test_shard_queue_names_never_collide_with_another_kinds_queue(tmp_path: Path) -> None:
    clash = (
        _BIG
        + "shards = 3\n"
        + _BIG.replace("firehose]", "other]")
        .replace('"collect-firehose"', '"collect-firehose-2"')
        .replace("1200.0", "100.0")
    )
    with pytest.raises(ConfigError, match="collect-firehose-2 is also a queue of kind"):
        load_settings(environ={}, config_dir=_with_queue(tmp_path, clash))


def test_the_ledger_pool_size_comes_from_the_environments_file(tmp_path: Path) -> None:
    assert load_settings(environ={}).ledger_pool_max_size == 8
    production = load_settings(environ={"DISPATCHER_ENV": "production"})
    # One pooled connection per concurrent request: production.tfvars' fanout concurrency.
    fanout = tfvars("production")["functions"]["fanout"]
    assert production.ledger_pool_max_size == fanout["concurrency"] == 6
    base = (project_root() / "app.toml").read_text()
    (tmp_path / "app.toml").write_text(base.replace("pool_max_size = 8", "pool_max_size = 0"))
    with pytest.raises(ConfigError, match=r"ledger\.pool_max_size: 0"):
        load_settings(environ={}, config_dir=tmp_path)
