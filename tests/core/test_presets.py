"""Each preset says what it studies, how many runs it makes and about how long they take."""

import math

import pytest

from core.presets import COST_PER_SECOND, PRESETS, preset_info
from core.spec import SweepCreate, estimated_cost
from core.sweeps import expand, resolve


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_a_preset_counts_its_runs_and_their_time(name: str) -> None:
    info = preset_info(name, 5e13)
    preset = PRESETS[name]
    levels = math.prod(len(v) for v in preset["grid"].values())
    assert info["runs"] == levels * len(preset["seeds"])
    assert info["description"] and info["name"] == preset["name"]
    points = expand(resolve(SweepCreate(preset=name)), 5e13)
    seconds = sum(estimated_cost(s) for _, s in points) / COST_PER_SECOND
    assert info["estimated_seconds"]["one_worker"] == math.ceil(seconds)
    assert info["estimated_seconds"]["four_workers"] == math.ceil(seconds / 4)


def test_the_presets_route_lists_them(client) -> None:
    body = client.get("/v1/sweeps/presets").json()
    assert set(body) == set(PRESETS)
    assert all(p["runs"] > 0 and p["estimated_seconds"]["one_worker"] > 0 for p in body.values())
