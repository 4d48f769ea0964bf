"""The experiment resource's progress: steps, and for a running row the time left."""

from datetime import timedelta
from types import SimpleNamespace

import pytest

from api.serializers import progress
from core.tables import utcnow


def test_a_running_experiment_has_an_eta_at_its_pace() -> None:
    row = SimpleNamespace(
        status="running",
        started_at=utcnow() - timedelta(seconds=10),
        progress_step=100,
        total_steps=1000,
    )
    assert progress(row)["eta_s"] == pytest.approx(90, abs=1)
    row.status = "succeeded"
    assert "eta_s" not in progress(row)
    row.status, row.progress_step = "running", 0
    assert "eta_s" not in progress(row)  # no pace yet
