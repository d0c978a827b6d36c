"""terraform/monitoring.tf and its dashboard against the log lines our code really writes.

The log lines come from running the real handler and use cases (captured_logs.py). Every
log-based metric's filter must match some of them and every field it names must carry the value
it asks for in a captured line; every alert and dashboard chart must read a metric that exists:
one of ours (and its labels with values our code writes) or a built-in one named in BUILTIN.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from tests.unit.deploy.captured_logs import LogEntry, capture
from tests.unit.deploy.hcl import TERRAFORM, Resource, resources

# Built-in metrics the alerts and charts read, with the monitored resource each is written for
# (https://cloud.google.com/monitoring/api/metrics_gcp, Pub/Sub and Cloud Tasks sections).
BUILTIN = {
    "pubsub.googleapis.com/subscription/num_undelivered_messages": "pubsub_subscription",
    "cloudtasks.googleapis.com/queue/task_attempt_delays": "cloud_tasks_queue",
    "cloudtasks.googleapis.com/queue/depth": "cloud_tasks_queue",
}
USER_METRIC = "logging.googleapis.com/user/"
# One alert per signal of the issue; the results-path ones come with the results function.
EXPECTED_ALERTS = {
    "dead_letters",
    "no_tick",
    "fanout_retries",
    "dispatch_failures",
    "queue_delay",
    "failed_outcomes",
    "lost_outcomes",
    "digest_problems",
}


# --- a small reader of the filter language: conjunctions of comparisons, nothing else ----------


@dataclass(frozen=True)
class Clause:
    field: str
    op: str  # "=" (one of values), "=~" (regex), ":" (has)
    values: tuple[str, ...]


_CLAUSE = re.compile(r"(?P<field>[A-Za-z_][\w.]*)\s*(?P<op>=~|=|:)\s*(?P<value>.+)")
_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')


def split_and(text: str) -> list[str]:
    """Top-level ``AND`` operands (not inside quotes or parentheses)."""
    parts, depth, quoted, start = [], 0, False, 0
    i = 0
    while i < len(text):
        char = text[i]
        if char == '"' and (i == 0 or text[i - 1] != "\\"):
            quoted = not quoted
        elif not quoted and char == "(":
            depth += 1
        elif not quoted and char == ")":
            depth -= 1
        elif not quoted and depth == 0 and text.startswith(" AND ", i):
            parts.append(text[start:i].strip())
            start = i + len(" AND ")
            i = start
            continue
        i += 1
    parts.append(text[start:].strip())
    return parts


def parse_filter(text: str) -> list[Clause]:
    """``a="x" AND b=("y" OR "z") AND c=~"re" AND d=monitoring.regex.full_match("re")``."""
    clauses = []
    for part in split_and(text):
        match = _CLAUSE.fullmatch(part)
        assert match, f"unsupported filter term {part!r} in {text!r}"
        field, op, value = match["field"], match["op"], match["value"].strip()
        regex = re.fullmatch(r'monitoring\.regex\.full_match\(\s*"(.*)"\s*\)', value)
        if regex:
            clauses.append(Clause(field, "=~", (f"^(?:{regex.group(1)})$",)))
            continue
        if value.startswith("(") and value.endswith(")"):
            alternatives = [v.strip() for v in value[1:-1].split(" OR ")]
            assert all(_STRING.fullmatch(v) for v in alternatives), f"unsupported {value!r}"
            clauses.append(Clause(field, op, tuple(v[1:-1] for v in alternatives)))
            continue
        assert _STRING.fullmatch(value), f"unsupported value {value!r} in {text!r}"
        clauses.append(Clause(field, op, (value[1:-1],)))
    return clauses


def lookup(entry: Mapping[str, Any], field: str) -> Any:
    value: Any = entry
    for part in field.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def satisfies(entry: Mapping[str, Any], clause: Clause) -> bool:
    value = lookup(entry, clause.field)
    if value is None:
        return False
    if clause.op == "=":
        return str(value) in clause.values
    if clause.op == "=~":
        return re.search(clause.values[0], str(value)) is not None
    return clause.values == ("*",) or clause.values[0] in str(value)


def matching(entries: list[LogEntry], clauses: list[Clause]) -> list[LogEntry]:
    return [e for e in entries if all(satisfies(e, c) for c in clauses)]


# --- the configuration ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def entries() -> list[LogEntry]:
    return capture()


def of_type(rtype: str) -> dict[str, Resource]:
    return {r.name: r for r in resources().values() if r.type == rtype}


def metrics() -> dict[str, Resource]:
    return of_type("google_logging_metric")


def resolve(text: str) -> str:
    """``${google_logging_metric.X.name}`` → X's name; any other interpolation is an error."""

    def name_of(match: re.Match[str]) -> str:
        return str(metrics()[match.group(1)].body["name"])

    resolved = re.sub(r"\$\{google_logging_metric\.([a-z_]+)\.name\}", name_of, text)
    assert "${" not in resolved, f"cannot evaluate {resolved!r}"
    return resolved


def alert_filters() -> Iterator[tuple[str, str]]:
    """(policy name, filter) for every condition filter of every alert policy."""
    for name, policy in of_type("google_monitoring_alert_policy").items():
        for condition in policy.body["conditions"]:
            for kind in ("condition_threshold", "condition_absent"):
                for block in condition.get(kind, []):
                    for key in ("filter", "denominator_filter"):
                        if key in block:
                            yield name, resolve(block[key])


def dashboard() -> dict[str, Any]:
    body = of_type("google_monitoring_dashboard")["dispatcher"].body
    assert body["dashboard_json"] == '${file("${path.module}/dashboards/dispatcher.json")}'
    loaded = json.loads((TERRAFORM / "dashboards" / "dispatcher.json").read_text())
    assert isinstance(loaded, dict)
    return loaded


def dashboard_filters() -> list[str]:
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "filter" and isinstance(value, str):
                    found.append(value)
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(dashboard())
    return found


def extracted_field(metric: Resource, label: str) -> str:
    """The jsonPayload field a metric label is extracted from (``EXTRACT(jsonPayload.x)``)."""
    extractor = metric.body.get("label_extractors", {}).get(label)
    assert extractor, f"{metric.name} has no label {label!r}"
    match = re.fullmatch(r"EXTRACT\((jsonPayload\.[\w.]+)\)", str(extractor))
    assert match, f"{metric.name}.{label}: unsupported extractor {extractor!r}"
    return match.group(1)


# --- log-based metrics against the captured lines -------------------------------------------


def test_the_scenarios_produce_every_decision_the_metrics_count(entries: list[LogEntry]) -> None:
    seen = {(e["jsonPayload"].get("function"), e["jsonPayload"].get("outcome")) for e in entries}
    assert {("select", "acked"), ("fanout", "acked"), ("fanout", "retry")} <= seen
    assert ("fanout", "dead-lettered") in seen


@pytest.mark.parametrize("name", sorted(metrics()))
def test_each_log_metric_matches_real_log_lines(name: str, entries: list[LogEntry]) -> None:
    metric = metrics()[name]
    clauses = parse_filter(str(metric.body["filter"]))
    matched = matching(entries, clauses)
    assert matched, f"{name}: no captured log line matches {metric.body['filter']!r}"
    # Each value the filter asks for is one our code writes (an OR-list: every alternative).
    for clause in clauses:
        if clause.field.startswith("jsonPayload.") and clause.op == "=":
            for value in clause.values:
                assert any(lookup(e, clause.field) == value for e in entries), (
                    f"{name}: no captured line has {clause.field}={value!r}"
                )
    for label in metric.body.get("label_extractors", {}):
        field = extracted_field(metric, label)
        assert all(lookup(e, field) is not None for e in matched), f"{name}: {field} missing"
    declared = {d["key"] for d in metric.body["metric_descriptor"][0].get("labels", [])}
    assert declared == set(metric.body.get("label_extractors", {})), name


def test_the_outcome_metric_counts_exactly_the_handler_decisions(entries: list[LogEntry]) -> None:
    matched = matching(entries, parse_filter(str(metrics()["outcomes"].body["filter"])))
    decisions = [e for e in entries if e["jsonPayload"].get("logger") == "shared.handler"]
    assert matched == decisions
    assert {e["jsonPayload"]["outcome"] for e in matched} == {"acked", "retry", "dead-lettered"}


def test_the_tick_metric_counts_only_acked_select_ticks(entries: list[LogEntry]) -> None:
    matched = matching(entries, parse_filter(str(metrics()["select_ticks"].body["filter"])))
    assert [(e["jsonPayload"]["function"], e["jsonPayload"]["outcome"]) for e in matched] == [
        ("select", "acked")
    ]


def test_the_failure_metric_counts_fanout_and_reconcile_failures(entries: list[LogEntry]) -> None:
    matched = matching(entries, parse_filter(str(metrics()["dispatch_failures"].body["filter"])))
    assert [(e["jsonPayload"]["logger"], e["jsonPayload"]["decision"]) for e in matched] == [
        ("shared.usecases.fanout", "partially-dispatched"),
        ("shared.ops.reconcile", "failed"),
    ]


# --- alerts and dashboard: the metrics they read exist, with the labels and values used -------


def check_monitoring_filter(text: str, entries: list[LogEntry]) -> str:
    """Assert ``text`` reads a real metric correctly; return its metric type."""
    clauses = {c.field: c for c in parse_filter(text)}
    metric_type = clauses["metric.type"].values[0]
    resource_type = clauses["resource.type"].values[0]
    if metric_type.startswith(USER_METRIC):
        by_name = {str(m.body["name"]): m for m in metrics().values()}
        metric = by_name.get(metric_type.removeprefix(USER_METRIC))
        assert metric is not None, f"{text!r}: no google_logging_metric named so"
        log_clauses = parse_filter(str(metric.body["filter"]))
        assert Clause("resource.type", "=", (resource_type,)) in log_clauses, text
        counted = matching(entries, log_clauses)
        for field, clause in clauses.items():
            if field.startswith("metric.label."):
                source = extracted_field(metric, field.removeprefix("metric.label."))
                for value in clause.values:
                    assert any(lookup(e, source) == value for e in counted), (
                        f"{text!r}: no counted line has {source}={value!r}"
                    )
    else:
        assert BUILTIN.get(metric_type) == resource_type, f"{text!r}: unknown built-in metric"
    return metric_type


@pytest.mark.parametrize(("policy", "text"), list(alert_filters()))
def test_each_alert_reads_a_real_metric(policy: str, text: str, entries: list[LogEntry]) -> None:
    check_monitoring_filter(text, entries)


@pytest.mark.parametrize("text", dashboard_filters())
def test_each_dashboard_chart_reads_a_real_metric(text: str, entries: list[LogEntry]) -> None:
    check_monitoring_filter(text, entries)


def test_the_dashboard_shows_every_alerted_signal_and_every_log_metric(
    entries: list[LogEntry],
) -> None:
    shown = {check_monitoring_filter(t, entries) for t in dashboard_filters()}
    alerted = {check_monitoring_filter(t, entries) for _, t in alert_filters()}
    ours = {USER_METRIC + str(m.body["name"]) for m in metrics().values()}
    assert alerted <= shown
    assert ours <= shown
    assert ours <= alerted, "a log-based metric nobody alerts on"


def test_one_alert_per_signal_each_notifying_the_channels_variable() -> None:
    policies = of_type("google_monitoring_alert_policy")
    assert set(policies) == EXPECTED_ALERTS
    for policy in policies.values():
        assert policy.body["notification_channels"] == "${var.notification_channels}"
        assert policy.body["documentation"][0]["content"], f"{policy.name}: say what to do"


def test_the_dead_letter_alert_watches_every_dead_letter_subscription_and_nothing_else(
    topology: dict[str, Any],
) -> None:
    texts = [t for p, t in alert_filters() if p == "dead_letters"] + [
        t for t in dashboard_filters() if "num_undelivered_messages" in t
    ]
    assert texts
    for text in texts:
        [clause] = [c for c in parse_filter(text) if c.field == "resource.label.subscription_id"]
        watched = re.compile(clause.values[0])
        for spec in topology["topics"].values():
            assert watched.search(spec["dead_letter"]["subscription"]), spec
            assert not watched.search(spec["push"]["subscription"]), spec


def test_the_function_resource_label_matches_the_function_names() -> None:
    # The metrics select dispatcher-* services: that is how functions.tf names the functions.
    function = resources()["google_cloudfunctions2_function.function"]
    assert function.body["name"] == "dispatcher-${each.key}"


@pytest.mark.parametrize(
    "text",
    [
        'jsonPayload.logger="shared.handler" AND jsonPayload.outcome="ack"',  # misspelt value
        'jsonPayload.logger="shared.handler" AND jsonPayload.outcomes="acked"',  # misspelt field
        'resource.type="cloud_function" AND jsonPayload.logger="shared.handler"',  # gen1 resource
    ],
)
def test_a_filter_our_logs_do_not_satisfy_matches_nothing(
    text: str, entries: list[LogEntry]
) -> None:
    # The reader above must not be so lenient that a wrong filter passes.
    assert matching(entries, parse_filter(text)) == []
