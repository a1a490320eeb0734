"""The janitor stays light: no torch, cv2, librosa or numpy, and Apprise only when a message is sent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from tests.janitor_support import HttpSink, make_config

FORBIDDEN = ("torch", "cv2", "librosa", "numpy")


def imported(*args: str, cwd: Path | None = None) -> set[str]:
    """Top-level module names a fresh interpreter imports while running *args* (from -X importtime)."""
    done = subprocess.run([sys.executable, "-X", "importtime", *args], capture_output=True, text=True, cwd=cwd)
    assert done.returncode == 0, done.stderr[-2000:]
    names = set()
    for line in done.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    assert names, "no import lines: -X importtime did not work"
    return names


def test_importing_the_janitor_imports_nothing_heavy() -> None:
    names = imported("-c", "import daemon.janitor, daemon.notify, daemon.janitor.metrics, daemon.cli")
    assert "daemon" in names
    assert not names & {*FORBIDDEN, "apprise"}, sorted(names & {*FORBIDDEN, "apprise"})


def test_the_s3_client_is_imported_only_when_archiving_to_s3(tmp_path: Path) -> None:
    names = imported("-c", "import daemon.janitor, daemon.janitor.archive, daemon.janitor.report, daemon.cli")
    assert not names & {"boto3", "botocore"}, sorted(names & {"boto3", "botocore"})
    (tmp_path / "nas").mkdir()
    to_nas = write_config(tmp_path / "nas-pass", janitor={"archive": {"url": f"file://{tmp_path / 'nas'}"}})
    names = imported("-m", "daemon.cli", "--config", str(to_nas), "janitor")
    assert not names & {"boto3", "botocore", *FORBIDDEN}, sorted(names & {"boto3", "botocore", *FORBIDDEN})


def write_config(tmp_path: Path, **overrides: object) -> Path:
    cfg = make_config(tmp_path, **overrides)
    path = tmp_path / "lipsyncd.yaml"
    path.write_text(yaml.safe_dump(json.loads(json.dumps(cfg))))
    return path


def test_a_pass_loads_apprise_only_when_it_sends(tmp_path: Path) -> None:
    quiet = write_config(tmp_path / "quiet", notify={"urls": ["json://127.0.0.1:9/"]})
    names = imported("-m", "daemon.cli", "--config", str(quiet), "janitor")
    assert not names & {*FORBIDDEN, "apprise"}, sorted(names & {*FORBIDDEN, "apprise"})

    with HttpSink() as sink:
        loud = write_config(tmp_path / "loud", notify={"urls": [f"json://127.0.0.1:{sink.port}/"]},
                            janitor={"disk": {"clear_percent": 0.001, "warn_percent": 0.002,
                                              "critical_percent": 100}})
        names = imported("-m", "daemon.cli", "--config", str(loud), "janitor")
        assert len(sink.requests) == 1
    assert "apprise" in names
    assert not names & set(FORBIDDEN), sorted(names & set(FORBIDDEN))
