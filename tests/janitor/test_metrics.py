"""The Prometheus textfile: written whole (temp + rename) and readable by Prometheus' own parser."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from daemon import janitor
from daemon.janitor import metrics
from tests.janitor_support import make_config, output, put


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_janitor_writes_the_textfile(tmp_path: Path) -> None:
    prom = tmp_path / "textfile" / "lipsyncd.prom"
    prom.parent.mkdir()
    cfg = make_config(tmp_path, metrics={"textfile": str(prom)})
    out = cfg.paths.outputs
    output(out, "2026-09-01", "ann", "old", 30, 4000)      # expired: 4000 + 200 + 300 bytes
    output(out, "2026-11-26", "ann", "new", 2, 1000)
    output(out, "2026-11-26", "张三", "新", 2, 2000)
    output(out, "2026-11-26", 'we"ird\\name', "x", 2, 10)
    put(cfg.paths.failed / "2026-11-26" / "ann" / "talk" / "error.txt", 1)
    spool = cfg.paths.spool
    for job_id, state in (("j1", "queued"), ("j2", "queued"), ("j3", "running")):
        (spool / job_id).mkdir()
        (spool / job_id / "job.json").write_text(f'{{"id": "{job_id}", "state": "{state}"}}')

    result = janitor.run_pass(cfg)
    assert result.ok
    text = prom.read_text(encoding="utf-8")
    got = samples(text)
    assert got[("lipsyncd_outputs_bytes", (("user", "ann"),))] == 1500
    assert got[("lipsyncd_outputs_files", (("user", "ann"),))] == 3
    assert got[("lipsyncd_outputs_bytes", (("user", "张三"),))] == 2500
    assert got[("lipsyncd_outputs_bytes", (("user", 'we"ird\\name'),))] == 510
    assert got[("lipsyncd_jobs", (("state", "queued"),))] == 2
    assert got[("lipsyncd_jobs", (("state", "running"),))] == 1
    assert got[("lipsyncd_jobs", (("state", "failed"),))] == 1
    assert got[("lipsyncd_jobs", (("state", "done"),))] == 3
    assert got[("lipsyncd_janitor_freed_bytes", ())] == 4500
    assert got[("lipsyncd_janitor_deleted_files", ())] == 3
    assert got[("lipsyncd_janitor_freed_bytes_total", ())] >= 4500
    assert got[("lipsyncd_janitor_last_run_timestamp_seconds", ())] == pytest.approx(result.started, abs=0.01)
    assert 0 <= got[("lipsyncd_janitor_last_run_duration_seconds", ())] < 60
    assert got[("lipsyncd_janitor_last_run_success", ())] == 1
    ratios = [v for (name, _), v in got.items() if name == "lipsyncd_disk_used_ratio"]
    assert len(ratios) == 1 and 0 < ratios[0] < 1
    assert os.listdir(prom.parent) == ["lipsyncd.prom"]  # no temp file left behind

    inode = prom.stat().st_ino
    janitor.run_pass(cfg)
    assert prom.stat().st_ino != inode  # replaced by rename, never rewritten in place
    assert samples(prom.read_text(encoding="utf-8"))[("lipsyncd_janitor_freed_bytes", ())] == 0


def test_a_textfile_that_cannot_be_written_fails_the_pass(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, metrics={"textfile": str(tmp_path / "no-such-folder" / "lipsyncd.prom")})
    result = janitor.run_pass(cfg)
    assert not result.ok and "cannot write the metrics textfile" in result.problems[0]


def test_render_escapes_labels_and_formats_numbers() -> None:
    m = metrics.Metric("x", "help text").add(1.5, user='a"b\nc').add(3, user="d")
    text = metrics.render([m])
    assert 'lipsyncd_x{user="a\\"b\\nc"} 1.5' in text and 'lipsyncd_x{user="d"} 3' in text
    assert samples(text)[("lipsyncd_x", (("user", 'a"b\nc'),))] == 1.5
