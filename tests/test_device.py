import os
import subprocess
import sys

import pytest
import torch

from seq2seq.device import _glibc, _malloc_trim, release_free_memory


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


@pytest.mark.skipif(_malloc_trim() is None, reason="needs glibc's malloc_trim")
def test_release_free_memory_returns_a_fragmented_heap_to_the_os():
    # 3,000 tensors of 96 KiB come from glibc's heap (below its mmap threshold); keeping
    # every 10th alive pins the heap, so freeing the rest cannot shrink it from the top.
    tensors = [torch.ones(24 * 1024) for _ in range(3000)]
    kept = tensors[::10]
    del tensors
    before = _rss_mb()
    release_free_memory(torch.device("cpu"))
    after = _rss_mb()
    assert before - after > 150, (before, after)  # ~250 MB of the ~280 MB were free
    assert all(float(t[0]) == 1.0 for t in kept)  # what is alive is untouched


@pytest.mark.parametrize("user, workload, expected", [
    (None, "train", "16"), (None, "decode", "64"), ("7", "decode", "7"), ("7", "train", "7"),
])
def test_kernel_cache_is_sized_per_workload_unless_the_user_chose(user, workload, expected):
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}
    if user is not None:
        env["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = user
    code = ("import os; from seq2seq.device import size_kernel_cache; "
            f"size_kernel_cache({workload!r}); "
            "print(os.environ['ONEDNN_PRIMITIVE_CACHE_CAPACITY'])")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == expected


# In a fresh process (the allocator's settings are process-wide): page faults of filling
# 64 MB tensors, each freed before the next. glibc mmaps blocks this large and unmaps them on
# free, so by default each one is faulted in afresh; once the freed blocks are kept, the heap
# settles after a few rounds (alignment padding defeats reuse at first) and refills are free.
REFILL = """
import resource, sys, torch
from seq2seq.device import keep_free_memory
kept = keep_free_memory(torch.device("cpu")) if sys.argv[1] == "keep" else False
faults = []
for _ in range(12):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = torch.ones(16 * 2**20)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    del t
print(kept, sum(faults[-3:]))
"""


@pytest.mark.skipif(_glibc("mallopt") is None, reason="needs glibc's mallopt")
@pytest.mark.parametrize("user_env", [False, True])
def test_keep_free_memory_reuses_freed_blocks_without_page_faults(user_env):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    if user_env:  # the user's own setting (here glibc's default) wins
        env["MALLOC_TRIM_THRESHOLD_"] = str(128 * 1024)

    def refill(mode):
        out = subprocess.run([sys.executable, "-c", REFILL, mode], env=env, check=True,
                             capture_output=True, text=True).stdout.split()
        return out[0] == "True", int(out[1])

    _, default_faults = refill("default")
    kept, keep_faults = refill("keep")
    assert default_faults > 30_000  # 3 x 64 MB / 4 KiB pages: each one faulted in again
    if user_env:
        assert not kept and keep_faults > 30_000
    else:
        assert kept and keep_faults < 3_000, keep_faults
