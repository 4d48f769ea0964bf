"""Bounded trace reads (README, "Security and reliability"): a thinned read decodes only the
rows it keeps and fetches only the chunks that hold them; every answer is capped whatever is
stored and whatever `max_points` asks."""

import tracemalloc

import numpy as np
import pytest

from core import traces
from core.tables import Experiment
from core.traces import Window, chunk_row, read_series
from tests.factories import SMALL, add_experiment

CHUNKS, PER_CHUNK, WIDTH = 100, 50, 200  # 5,000 steps; a profile of 1,000,000 values


@pytest.fixture
def stored(sessions) -> str:
    """An experiment with a long loss series and a long temporal profile, written as a worker
    writes them (chunks of one flushed batch each)."""
    exp_id = add_experiment(sessions, SMALL)
    rng = np.random.default_rng(0)
    with sessions() as s:
        row = s.get(Experiment, exp_id)
        row.status, row.attempt = "succeeded", 1
        for c in range(CHUNKS):
            steps = list(range(c * PER_CHUNK, (c + 1) * PER_CHUNK))
            s.add(chunk_row(exp_id, 1, "loss", steps, rng.random((PER_CHUNK, 1))))
            s.add(chunk_row(exp_id, 1, "grad_norm_total", steps, rng.random((PER_CHUNK, 1))))
            s.add(chunk_row(exp_id, 1, "temporal/0", steps, rng.random((PER_CHUNK, WIDTH))))
        s.commit()
    return exp_id


@pytest.fixture
def counted(monkeypatch) -> dict[str, int]:
    """Rows decoded and chunks whose values were fetched, by every bounded read."""
    seen = {"rows": 0, "chunks": 0}
    decode = traces.decode_rows

    def counting(raw: bytes, width: int, indices):
        indices = list(indices)
        seen["rows"] += len(indices)
        seen["chunks"] += 1
        return decode(raw, width, indices)

    monkeypatch.setattr(traces, "decode_rows", counting)
    return seen


def test_a_thinned_read_decodes_only_the_rows_it_keeps(client, stored, counted) -> None:
    body = client.get(f"/v1/experiments/{stored}/gradients", params={"max_points": 10}).json()
    (layer,) = body["temporal"]["layers"]
    assert len(layer["steps"]) == 10 and len(layer["values"][0]) == WIDTH
    assert len(body["steps"]) == 10
    # 10 rows of each of the two series asked for (after_clip has none), from 10 of 100 chunks
    assert counted["rows"] == 20 and counted["chunks"] == 20
    # the rows are the stored ones, evenly spaced with the first and the last step kept
    assert layer["steps"] == [round(k * 4999 / 9) for k in range(10)]
    tail = client.get(f"/v1/experiments/{stored}/gradients", params={"from_step": 4999}).json()
    assert tail["temporal"]["layers"][0]["steps"] == [4999]
    assert layer["values"][-1] == tail["temporal"]["layers"][0]["values"][0]


def test_memory_of_a_thinned_read_does_not_grow_with_the_stored_series(
    sessions, stored, counted
) -> None:
    with sessions() as s:
        row = s.get(Experiment, stored)
        tracemalloc.start()
        got = read_series(s, row, names=["temporal/0"], pick=Window(max_points=10).pick)
        thin_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        tracemalloc.start()
        whole = read_series(s, row, names=["temporal/0"])
        whole_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert len(got["temporal/0"][0]) == 10 and len(whole["temporal/0"][0]) == 5000
    # the whole profile is 1e6 floats (~32 MB as Python objects); ten rows and the steps, not
    assert whole_peak > 20e6 and thin_peak < 2e6, (thin_peak, whole_peak)


def test_every_answer_is_capped(client, stored, settings, monkeypatch) -> None:
    monkeypatch.setattr(settings, "max_trace_points", 300)
    monkeypatch.setattr(settings, "max_trace_values", 20_000)
    url = f"/v1/experiments/{stored}"
    for params in ({}, {"max_points": 1_000_000}):
        metrics = client.get(f"{url}/metrics", params=params).json()
        assert 100 <= len(metrics["steps"]) <= 300 and len(metrics["loss"]) == len(metrics["steps"])
        grads = client.get(f"{url}/gradients", params=params).json()
        assert len(grads["steps"]) <= 300
        rows = grads["temporal"]["layers"][0]["values"]
        assert 0 < len(rows) * WIDTH <= 20_000
    # asking for fewer is honoured, from the range asked
    few = client.get(f"{url}/metrics", params={"max_points": 5, "from_step": 1000}).json()
    assert len(few["steps"]) == 5 and few["steps"][0] == 1000
    # the figures read bounded too, and still draw
    assert client.get(f"{url}/plots/temporal.png").status_code == 200
    assert client.get(f"{url}/plots/loss.svg").status_code == 200
