"""A layout the janitor refuses is reported by doctor and status too (the same rule, daemon/config.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from daemon import config as configmod
from daemon.cli import main as cli_main
from daemon.commands import status
from tests.daemon_harness import write_config
from tests.janitor_support import kept_logging

LIPSYNCD = str(Path(sys.executable).parent / "lipsyncd")


def bad_layout(tmp_path: Path) -> Path:
    """Outputs inside the inbox and a symlinked failed/: two things the janitor refuses."""
    config = write_config(tmp_path)
    data = yaml.safe_load(config.read_text())
    data["paths"]["outputs"] = str(tmp_path / "inbox" / "outputs")
    (tmp_path / "inbox" / "outputs").mkdir()
    (tmp_path / "failed").rmdir()
    (tmp_path / "failed").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "elsewhere").mkdir()
    config.write_text(yaml.safe_dump(data))
    return config


def test_doctor_fails_a_layout_the_janitor_refuses(tmp_path: Path) -> None:
    config = bad_layout(tmp_path)
    done = subprocess.run([LIPSYNCD, "--config", str(config), "doctor"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    fails = [line for line in done.stdout.splitlines() if line.startswith("FAIL  layout: ")]
    assert len(fails) == 2, done.stdout
    assert f"paths.failed: {tmp_path / 'failed'} is a symlink" in fails[0]
    assert f"paths.inbox: {tmp_path / 'inbox'} overlaps paths.outputs" in fails[1]
    assert "WARN  paths.failed" not in done.stdout  # the symlink is said once, as the failure it is


def test_status_says_the_layout_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = configmod.load(bad_layout(tmp_path))
    assert status.main(cfg) == 0  # status still shows everything it can
    text = capsys.readouterr().out
    assert text.startswith(f"Configuration problem: {cfg.source}:")
    assert "paths.failed" in text and "is a symlink" in text and "overlaps paths.outputs" in text
    assert "lipsyncd run and the janitor refuse to work" in text and "Queue: 0 waiting" in text
    assert status.main(cfg, as_json=True) == 0
    problems = json.loads(capsys.readouterr().out)["config_problems"]
    assert len(problems) == 2 and "is a symlink" in problems[0]


def test_status_of_a_good_layout_names_no_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert status.main(configmod.load(write_config(tmp_path))) == 0
    assert "Configuration problem" not in capsys.readouterr().out


@pytest.mark.parametrize("args", [["worker"], ["submit", "a.wav", "v.mp4"], ["retry", "some-job"], ["janitor"]])
def test_commands_that_work_on_the_folders_exit_2_on_a_refused_layout(tmp_path: Path, args: list[str],
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    config = bad_layout(tmp_path)
    with kept_logging():
        assert cli_main(["--config", str(config), *args]) == 2
    err = capsys.readouterr().err
    assert f"configuration error: {config}:" in err and "paths.failed" in err and "is a symlink" in err
    assert not list((tmp_path / "inbox").rglob("*.*")) and not list((tmp_path / "spool").iterdir())
