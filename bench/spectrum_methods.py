"""How the spectrum instrument computes sigma_max and the spectral radius of W_hh's gate blocks,
chosen by measurement: ms per layer (G blocks of H x H, one thread, median of interleaved
repeats) and each estimate's largest relative error against float64 svdvals / eigvals, on
gaussian blocks (circular law: complex eigenvalues fill a disk), orthogonal blocks (every
|lambda| = 1, the default init) and an orthogonal block with a low-rank outlier.

    .venv/bin/python bench/spectrum_methods.py [--hidden 128 --blocks 4 --repeats 9]

Arnoldi (m steps, warm-started from the previous call's dominant Ritz vector, as it would be
between instrumented steps) is the Krylov candidate for the radius."""

import argparse
import statistics
import time

import torch


def arnoldi_radius(w: torch.Tensor, v0: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Largest |Ritz value| of an m-step Arnoldi on each block (G, n, n) from v0 (G, n), and
    the dominant Ritz vector's real part (the next warm start)."""
    g, n, _ = w.shape
    m = min(m, n)
    basis = w.new_zeros(g, n, m + 1)
    hess = w.new_zeros(g, m + 1, m)
    basis[:, :, 0] = v0 / v0.norm(dim=1, keepdim=True)
    for j in range(m):
        vec = torch.bmm(w, basis[:, :, j : j + 1]).squeeze(2)
        for _ in range(2):  # classical Gram-Schmidt twice
            h = torch.bmm(basis[:, :, : j + 1].mT, vec.unsqueeze(2)).squeeze(2)
            vec = vec - torch.bmm(basis[:, :, : j + 1], h.unsqueeze(2)).squeeze(2)
            hess[:, : j + 1, j] += h
        norm = vec.norm(dim=1)
        hess[:, j + 1, j] = norm
        basis[:, :, j + 1] = vec / norm.clamp_min(1e-30).unsqueeze(1)
    ev, evec = torch.linalg.eig(hess[:, :m, :m])
    top = ev.abs().argmax(dim=1)
    y = evec[torch.arange(g), :, top]
    x = torch.bmm(basis[:, :, :m].to(y.dtype), y.unsqueeze(2)).squeeze(2)
    return ev.abs().amax(dim=1), x.real + x.imag


def scaled_gram_sigma(m: torch.Tensor) -> torch.Tensor:
    """What worker/instruments/spectrum.py does: the Gram matrix of each block scaled by its
    largest |entry| (no overflow), its largest eigenvalue's square root."""
    scale = m.abs().amax(dim=(1, 2))
    unit = m / scale[:, None, None]
    return torch.linalg.eigvalsh(unit.mT @ unit)[:, -1].sqrt() * scale


def cases(n: int, g: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    q = torch.linalg.qr(torch.randn(g, n, n))[0]
    outlier = 0.3 * torch.randn(g, n, 1) @ torch.randn(g, 1, n) / n**0.5
    return {
        "gaussian": torch.randn(g, n, n) / n**0.5,
        "orthogonal": q,
        "orth 0.9 + outlier": 0.9 * q + outlier,
    }


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--blocks", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=9)
    a = ap.parse_args()
    torch.set_num_threads(1)
    n, g = a.hidden, a.blocks
    mats = cases(n, g)
    w = mats["gaussian"]
    v0 = torch.randn(g, n)
    methods = {
        "sigma: svdvals": lambda m: torch.linalg.svdvals(m)[:, 0],
        "sigma: eigvalsh(W^T W) (chosen)": scaled_gram_sigma,
        "radius: eigvals (chosen)": lambda m: torch.linalg.eigvals(m).abs().amax(1),
    }
    for steps in (16, 32, 48):
        methods[f"radius: Arnoldi m={steps}, warm"] = lambda m, k=steps: arnoldi_radius(
            m, arnoldi_radius(m, v0, k)[1], k
        )[0]
    print(f"torch {torch.__version__}, 1 thread, {g} blocks of {n} x {n}")
    print(f"{'method':<34} {'ms/layer':>9} " + " ".join(f"{c:>20}" for c in mats))
    for name, fn in methods.items():
        ms = median_ms(lambda fn=fn: fn(w), a.repeats)
        if name.startswith("radius: Arnoldi"):  # the timing of one warm call, not two
            ms /= 2
        errs = []
        for m in mats.values():
            exact = (
                torch.linalg.svdvals(m.double())[:, 0]
                if name.startswith("sigma")
                else torch.linalg.eigvals(m.double()).abs().amax(1)
            )
            errs.append(float(((fn(m).double() - exact) / exact).abs().max()))
        print(f"{name:<34} {ms:>9.2f} " + " ".join(f"{e:>20.1e}" for e in errs), flush=True)


if __name__ == "__main__":
    main()
