"""Frame batches from the process heap, not fresh mappings: glibc tuned for the length of a render.

glibc's malloc gives every allocation over its mmap threshold (at most 32 MB) a fresh mapping and unmaps it
when it is freed. A batch of 32 frames of 720p is 44 MB, so each batch was mapped anew, and the kernel
faulted in and zeroed all 11,000 of its pages again. Temporaries of a few MB, such as the warp's, went the
same way whenever the heap's top was trimmed. For a 10 s 720p render that cost about 0.7 s of CPU in the
engine's process, most of it in the kernel, and 0.45 s of wall time on 2 cores (bench/pipeline.py). It also
held the GIL while bytearray() zeroed the fresh pages.

Inside frames_from_heap() nothing is mapped per allocation and free memory is not trimmed, so batches reuse
the same pages. Afterwards the defaults come back and the free memory is returned to the system
(malloc_trim), so an idle worker does not keep a render's peak. Peak memory does not change: the
batches alive at once are the same.

Not glibc (musl, say): nothing is changed.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
from collections.abc import Iterator

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # mallopt parameters (malloc.h)
DEFAULT_TRIM_THRESHOLD, DEFAULT_MMAP_MAX = 128 * 1024, 65536  # glibc's defaults
NO_TRIM = 1 << 30


@contextlib.contextmanager
def frames_from_heap() -> Iterator[None]:
    """While inside, large allocations come from the heap and freed memory stays for reuse.

    Process-wide: meant for one render at a time, as a worker and `lipsyncd render` run them.
    """
    libc = _glibc()
    if libc is None:
        yield
        return
    libc.mallopt(M_MMAP_MAX, 0)
    libc.mallopt(M_TRIM_THRESHOLD, NO_TRIM)
    try:
        yield
    finally:
        libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
        libc.mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
        libc.malloc_trim(0)


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The C library, if it is glibc (it has mallopt and malloc_trim with these meanings)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 (glibc only)
    except (OSError, AttributeError):
        return None
    return libc
