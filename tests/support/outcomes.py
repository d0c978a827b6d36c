"""Hypothesis strategies for collectors' outcome reports (unit and ledger tests share them)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import strategies as st

from shared.outcomes import Report

T0 = datetime(2026, 1, 5, 9, 0, 10, tzinfo=UTC)

reports = st.builds(
    Report,
    outcome=st.sampled_from(["started", "succeeded", "failed", "skipped"]),
    attempt=st.integers(1, 6),
    reported_at=st.integers(0, 600).map(lambda s: T0 + timedelta(seconds=s)),
    final=st.booleans(),
    duration_ms=st.none() | st.integers(0, 5000),
    items=st.none() | st.integers(0, 50),
    error=st.none() | st.sampled_from(["503", "timeout", "refused"]),
)
