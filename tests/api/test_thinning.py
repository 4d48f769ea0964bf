"""Thinning a trace (core.traces.Window, what api.deps.Thinning asks for): a range, every
k-th point, then at most max_points evenly spaced with the first and the last kept."""

from core.traces import Window

# the README's run: 300 steps instrumented every 10, and the last step
STEPS = [*range(0, 300, 10), 299]


def thin(**query) -> list[int]:
    return [STEPS[i] for i in Window(**query).pick(STEPS)]


def test_max_points_keeps_the_first_and_the_last_evenly_spaced() -> None:
    got = thin(max_points=10)
    assert len(got) == 10 and got[0] == 0 and got[-1] == 299
    gaps = [b - a for a, b in zip(got, got[1:], strict=False)]
    assert max(gaps) - min(gaps) <= 20  # even, up to the rounding of one stride


def test_more_points_than_there_are_changes_nothing() -> None:
    assert thin(max_points=50) == STEPS
    assert thin(max_points=1) == [0]


def test_range_and_every_come_first() -> None:
    assert thin(from_step=100, to_step=200) == list(range(100, 201, 10))
    assert thin(from_step=100, to_step=200, every=5) == [100, 150, 200]
    assert thin(from_step=100, to_step=200, max_points=3) == [100, 150, 200]
