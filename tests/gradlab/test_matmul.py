"""The products the closed-form layers take (gradlab/instruments/matmul.py): oneDNN's or
torch's own for float32 on the CPU, by the kind of CPU, torch.addmm's otherwise; each
route equal to a float64 reference."""

from pathlib import Path

import pytest
import torch

from gradlab.instruments import matmul

DTYPES = [torch.float32, torch.float64]


def operands(dtype: torch.dtype, rows: int = 37) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(rows, 24, generator=gen, dtype=dtype)
    w = torch.randn(40, 24, generator=gen, dtype=dtype)
    b = torch.randn(40, generator=gen, dtype=dtype)
    add = torch.randn(rows, 40, generator=gen, dtype=dtype)
    return x, w, b, add


def close(got: torch.Tensor, want: torch.Tensor) -> None:
    tol = 1e-5 if got.dtype == torch.float32 else 1e-12
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)


def test_float32_on_the_cpu_goes_to_onednn_where_torch_has_it() -> None:
    assert matmul.onednn(torch.zeros(2)) == torch.backends.mkldnn.is_available()
    assert not matmul.onednn(torch.zeros(2, dtype=torch.float64))
    with torch.backends.mkldnn.flags(enabled=False):
        assert not matmul.onednn(torch.zeros(2))


@pytest.mark.parametrize("route", ["onednn", "blas", None])
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_product_equals_the_float64_one(dtype: torch.dtype, route: str | None) -> None:
    with matmul.pinned(route):
        products_equal_the_float64_ones(dtype, route)


def products_equal_the_float64_ones(dtype: torch.dtype, route: str | None) -> None:
    x, w, b, add = operands(dtype)
    xd, wd, bd, addd = (t.double() for t in (x, w, b, add))
    close(matmul.linear(x, w), xd @ wd.t())
    close(matmul.linear(x, w, b), xd @ wd.t() + bd)
    close(matmul.t_mm(x, add), xd.t() @ addd)
    close(matmul.accumulate(add.clone(), x, w), addd + xd @ wd.t())
    packed = matmul.Weight(w, x.shape[0])
    if route is not None:
        assert (packed.packed is not None) == (route == "onednn" and matmul.onednn(w))
    close(packed.plus(x, add), addd + xd @ wd.t())
    close(packed.times(x), xd @ wd.t())
    close(packed.times(x, b), xd @ wd.t() + bd)
    out = add.clone()
    assert packed.accumulate(out, x) is out  # in place
    close(out, addd + xd @ wd.t())
    # another row count than the one the weight was packed for
    close(packed.plus(x[:5], add[:5]), addd[:5] + xd[:5] @ wd.t())


def test_without_onednn_the_products_are_torchs_own_bit_for_bit() -> None:
    x, w, b, add = operands(torch.float32)
    with torch.backends.mkldnn.flags(enabled=False):
        assert torch.equal(matmul.linear(x, w, b), torch.addmm(b, x, w.t()))
        assert torch.equal(matmul.t_mm(x, add), x.t() @ add)
        assert torch.equal(matmul.Weight(w, 37).plus(x, add), torch.addmm(add, x, w.t()))


def test_onednn_takes_the_products_only_when_it_wins_the_race_by_the_margin() -> None:
    assert matmul.choose({"onednn": 8.0, "blas": 10.0}) == "onednn"
    assert matmul.choose({"onednn": 9.0, "blas": 10.0}) == "onednn"  # the margin itself
    assert matmul.choose({"onednn": 9.5, "blas": 10.0}) == "blas"  # a near tie: torch's own
    assert matmul.choose({"onednn": 12.0, "blas": 10.0}) == "blas"


def test_the_race_times_both_routes() -> None:
    seconds = matmul.race(reps=1)
    assert set(seconds) == {"onednn", "blas"}
    assert all(0 < s < 10 for s in seconds.values())


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("GRADLAB_PRODUCTS", raising=False)
    if not (torch.backends.mkldnn.enabled and matmul._available()):
        pytest.skip("no oneDNN in this torch: the route is torch's own, never raced")
    return tmp_path


def test_the_route_is_raced_once_per_machine_and_filed(fresh_cache, monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(matmul, "race", lambda: calls.append(1) or {"onednn": 1, "blas": 2})
    assert matmul.machine_route() == "onednn"
    path = matmul._route_file()
    assert path.is_relative_to(fresh_cache) and path.read_text().startswith("onednn ")
    monkeypatch.setattr(matmul, "race", lambda: {"onednn": 2, "blas": 1})  # a later process
    assert matmul.machine_route() == "onednn"  # the filed route, not a new race
    assert calls == [1]
    assert list(path.parent.iterdir()) == [path]  # no temporary file left


def test_a_filed_route_that_does_not_parse_is_raced_again(fresh_cache, monkeypatch) -> None:
    path = matmul._route_file()
    path.parent.mkdir(parents=True)
    path.write_text("")
    monkeypatch.setattr(matmul, "race", lambda: {"onednn": 2, "blas": 1})
    assert matmul.machine_route() == "blas"  # raced, and the race's figures replace the file
    assert path.read_text().startswith("blas ")
    path.write_text("fastest 1ms\n")
    assert matmul.machine_route() == "blas"
    assert path.read_text().startswith("blas ") and list(path.parent.iterdir()) == [path]


def test_two_first_races_at_once_take_the_first_filed_route(fresh_cache, monkeypatch) -> None:
    path = matmul._route_file()

    def race_while_another_files() -> dict[str, float]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("onednn onednn=1ms blas=2ms\n")  # the other process, done first
        return {"onednn": 2, "blas": 1}

    monkeypatch.setattr(matmul, "race", race_while_another_files)
    assert matmul.machine_route() == "onednn"  # not this process's own "blas"
    assert path.read_text().startswith("onednn ") and list(path.parent.iterdir()) == [path]


def test_gradlab_products_fixes_the_route(fresh_cache, monkeypatch) -> None:
    monkeypatch.setattr(matmul, "race", lambda: pytest.fail("raced with a fixed route"))
    for route in ("onednn", "blas"):
        monkeypatch.setenv("GRADLAB_PRODUCTS", route)
        assert matmul.machine_route() == route
    assert not matmul._route_file().exists()
    monkeypatch.setenv("GRADLAB_PRODUCTS", "mkl")  # a typo is an error, not a silent race
    with pytest.raises(ValueError, match="GRADLAB_PRODUCTS='mkl'"):
        matmul.machine_route()


def test_products_take_the_machines_route() -> None:
    x, w, _, _ = operands(torch.float32)
    machine = matmul._machine_prefers_onednn()
    assert (matmul.Weight(w, 37).packed is not None) == (machine and matmul.onednn(w))
    if not machine:  # torch's own product, bit for bit
        assert torch.equal(matmul.t_mm(x, x), x.t() @ x)


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="Linux's /proc")
def test_the_vendor_is_read_from_linux() -> None:
    vendor = matmul.cpuinfo("vendor_id")
    with open("/proc/cpuinfo") as f:
        assert (vendor != "") == ("vendor_id" in f.read())


def test_pinning_a_route_holds_inside_and_ends_with_the_block() -> None:
    x, w, _, _ = operands(torch.float32)
    with matmul.pinned("blas"):
        assert matmul.Weight(w, 37).packed is None
        assert torch.equal(matmul.t_mm(x, x), x.t() @ x)
        with matmul.pinned("onednn"):
            assert (matmul.Weight(w, 37).packed is not None) == matmul.onednn(w)
        assert matmul.Weight(w, 37).packed is None
    assert matmul._pinned is None
