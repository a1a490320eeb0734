"""media.heap: inside a render, big frame buffers reuse the same pages; afterwards the memory goes back."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# In a fresh process (mallopt is process-wide): minor page faults of allocating and freeing a 44 MB buffer
# (one batch of 32 frames of 720p yuv420p) five times, outside, inside, and outside again; and the resident
# size inside (with the buffers freed) and after leaving.
PROBE = """
import resource
from pipeline.media.heap import frames_from_heap

def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        buffer = bytearray(44 << 20)
        del buffer
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

def resident_mb():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20

outside = faults()
with frames_from_heap():
    inside = faults()
    kept = resident_mb()
after = resident_mb()
again = faults()
print(outside, inside, again, round(kept), round(after))
"""


def test_big_buffers_reuse_their_pages_inside_and_the_memory_is_returned_after() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=ROOT, check=True)
    outside, inside, again, kept, after = (float(value) for value in done.stdout.split())
    pages = 5 * (44 << 20) / 4096
    assert outside >= 0.9 * pages  # every buffer a fresh mapping, faulted in page by page
    assert inside <= 0.3 * pages  # the first buffer's pages, then the same ones again
    assert again >= 0.9 * pages  # the defaults are back
    assert kept >= after + 30  # the freed buffer stayed in the process while inside, and went back after
