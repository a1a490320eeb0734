"""bench/pipeline.py still runs against the engine's current code (a smoke run; it times nothing here).

The bench scripts import engine internals (the stage-by-stage timing uses the warp, the trackers and the
engine's thread settings), so a rename in pipeline/ can break them without any other test noticing.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_pipeline_bench_runs_on_a_tiny_clip() -> None:
    done = subprocess.run([sys.executable, "bench/pipeline.py", "--size", "360", "--seconds", "1", "--no-memory"],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    for line in ("ratio engine / floor:", "each stage alone on the same frames:", "mouth warp"):
        assert line in done.stdout, done.stdout
