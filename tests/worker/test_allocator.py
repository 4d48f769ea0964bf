"""The allocator settings a worker trains under: measured in a child process, since they are
process-wide and last."""

import subprocess
import sys
import textwrap

import pytest

from worker.allocator import _glibc

CHILD = textwrap.dedent(
    """
    import resource
    import torch
    from worker import allocator

    def faults_per_step(steps=20):
        for _ in range(steps):  # 40 MB, a step's gate buffers; the heap settles first
            torch.empty(10 * 2**20).fill_(1.0)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(steps):
            torch.empty(10 * 2**20).fill_(1.0)
        return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / steps

    def rss_mib():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024

    plain = faults_per_step()
    took = allocator.keep_freed_memory()
    kept = faults_per_step()
    held = [torch.ones(2**18) for _ in range(300)]  # 300 MB in 1 MB blocks, then freed
    base = rss_mib() - 300
    del held
    kept_rss = rss_mib() - base
    allocator.hand_back_freed_memory()
    print(took, plain, kept, kept_rss, rss_mib() - base)
    """
)


@pytest.mark.skipif(_glibc() is None, reason="glibc only")
def test_freed_memory_is_reused_while_training_and_handed_back_after() -> None:
    out = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    took, (plain, kept, kept_rss, after_rss) = out[0] == "True", map(float, out[1:])
    assert took
    assert plain > 5000  # 40 MB is mmapped and unmapped every time: ~10,000 pages faulted in
    assert kept < 50  # reused from the heap
    assert kept_rss > 250  # freed, and still held for the next step
    assert after_rss < 50  # handed back when the run ends
