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


def test_the_route_is_the_machines_onednn_on_amd_with_avx512_mkl_elsewhere() -> None:
    assert matmul.prefers_onednn("AVX512", "AuthenticAMD")
    assert not matmul.prefers_onednn("AVX512", "GenuineIntel")  # MKL's own AVX-512 kernels
    assert not matmul.prefers_onednn("AVX2", "AuthenticAMD")
    assert not matmul.prefers_onednn("AVX512", "")  # unknown maker: torch's own
    x, w, _, _ = operands(torch.float32)
    machine = matmul.prefers_onednn(torch.backends.cpu.get_cpu_capability(), matmul.cpu_vendor())
    assert (matmul.Weight(w, 37).packed is not None) == (machine and matmul.onednn(w))
    if not machine:  # torch's own product, bit for bit
        assert torch.equal(matmul.t_mm(x, x), x.t() @ x)


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="Linux's /proc")
def test_the_vendor_is_read_from_linux() -> None:
    vendor = matmul.cpu_vendor()
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
