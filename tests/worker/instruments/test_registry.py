"""The optional instruments a spec accepts and the ones the worker can build are the same set."""

from core.spec import OPTIONAL_INSTRUMENTS, ExperimentCreate
from worker.instruments import OPTIONAL, default_instruments


def test_every_name_the_spec_accepts_has_an_instrument_and_back() -> None:
    assert set(OPTIONAL) == set(OPTIONAL_INSTRUMENTS)


def test_each_optional_name_builds_its_own_instrument() -> None:
    for name in OPTIONAL_INSTRUMENTS:
        spec = ExperimentCreate.model_validate({"instrument": {"on": [name]}})
        built = {type(i) for i in default_instruments(spec)}
        assert OPTIONAL[name] in built
        assert not {OPTIONAL[n] for n in OPTIONAL_INSTRUMENTS if n != name} & built
