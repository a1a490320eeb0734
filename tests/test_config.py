"""Configuration: defaults, the shipped file, and errors that name the key, the file and the line."""

from __future__ import annotations

import copy
import dataclasses
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from daemon import config as configmod
from daemon.cli import build_parser
from daemon.cli import main as cli_main
from pipeline import engines

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_config_documents_exactly_the_defaults() -> None:
    shipped = yaml.safe_load((ROOT / "config" / "lipsyncd.yaml").read_text())
    assert shipped == configmod.DEFAULTS
    loaded = configmod.load(ROOT / "config" / "lipsyncd.yaml")
    assert dict(loaded) == configmod.DEFAULTS


def test_defaults_without_file_only_when_not_required() -> None:
    assert configmod.load(None, required=False)["ingest"]["settle_seconds"] == 5
    with pytest.raises(configmod.ConfigError, match="no configuration file"):
        configmod.load(None, required=True)


def test_user_values_merge_over_defaults(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("ingest:\n  settle_seconds: 1.5\npipeline:\n  device: [cpu, cuda:1]\n")
    cfg = configmod.load(path)
    assert cfg["ingest"]["settle_seconds"] == 1.5
    assert cfg["ingest"]["rescan_seconds"] == 60
    assert cfg.pipeline.devices == ("cpu", "cuda:1")
    assert cfg.ingest.settle_seconds == 1.5 and cfg.pipeline.devices == ("cpu", "cuda:1")


def test_sections_are_read_once_into_typed_values(tmp_path: Path) -> None:
    cfg = configmod.load(None, required=False, overrides={
        "paths": {"outputs": str(tmp_path / "out")},
        "janitor": {"retention": {"rules": [{"match": "ann/*", "days": 2}]}},
        "logging": {"file": str(tmp_path / "l.log")},
    })
    assert cfg.queue.lease_seconds == 30.0 and isinstance(cfg.queue.lease_seconds, float)
    assert cfg.queue.max_attempts == 3 and cfg.queue.url is None and cfg.queue.local_workers is True
    assert cfg.paths.outputs == tmp_path / "out" == cfg.paths.folders()["outputs"]
    assert list(cfg.paths.folders()) == list(configmod.DEFAULTS["paths"])
    assert cfg.janitor.retention.rules == (configmod.RetentionRule(match="ann/*", days=2.0),)
    assert cfg.janitor.disk.critical_percent == 90.0 and cfg.notify.events == ("disk", "job_failed")
    assert cfg.logging.file == tmp_path / "l.log" and cfg.metrics.textfile is None
    assert cfg.pipeline.engine == "builtin" and cfg.pipeline.settings is cfg["pipeline"]  # engines get the mapping
    assert cfg["queue"]["lease_seconds"] == 30  # still the mapping it always was
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.queue.lease_seconds = 1  # type: ignore[misc]


def test_engine_names_come_from_the_registry(capsys: pytest.CaptureFixture[str]) -> None:
    assert configmod.DEFAULTS["pipeline"]["allowed_engines"] == list(engines.NAMES)
    assert build_parser().parse_args(["demo", "--engine", "command"]).engine == "command"
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["render", "a.wav", "v.mp4", "-o", "o.mp4", "--engine", "magic"])
    assert info.value.code == 2 and "magic" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "key", "line"),
    [
        ("ingest:\n  settle_secs: 3\n", "ingest.settle_secs", 2),
        ("paths:\n  inbox: /x\ningest:\n  poll: 'yes'\n", "ingest.poll", 4),
        ("ingest:\n  settle_seconds: -1\n", "ingest.settle_seconds", 2),
        ("pipeline:\n  engine: magic\n", "pipeline.engine", 2),
        ("pipeline:\n  device: gpu0\n", "pipeline.device", 2),
        ("queue:\n  url: http://x\n", "queue.url", 2),
        ("janitor:\n  retention:\n    rules: [{match: x}]\n", "janitor.retention.rules", 3),
        ("notify: []\n", "notify", 1),
        ("janitor:\n  archive:\n    url: ftp://nas/x\n", "janitor.archive.url", 3),
        ("janitor:\n  archive:\n    url: s3://\n", "janitor.archive.url", 3),
        ("janitor:\n  archive:\n    endpoint_url: minio:9000\n", "janitor.archive.endpoint_url", 3),
        ("janitor:\n  archive:\n    after_days: -1\n", "janitor.archive.after_days", 3),
        ("janitor:\n  archive:\n    required: maybe\n", "janitor.archive.required", 3),
        ("janitor:\n  retention:\n    rules: [{match: x, days: 3, archive_days: soon}]\n",
         "janitor.retention.rules", 3),
    ],
)
def test_errors_name_key_file_and_line(tmp_path: Path, text: str, key: str, line: int) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(configmod.ConfigError) as info:
        configmod.load(path)
    message = str(info.value)
    assert key in message
    assert f"{path}:{line}:" in message


@pytest.mark.parametrize(
    ("text", "key", "first", "second"),
    [
        # A second section: before, its keys silently replaced the first one's (paths.inbox vanished).
        ("paths:\n  inbox: /srv/in\ningest:\n  poll: true\npaths:\n  outputs: /srv/out\n", "paths", 1, 5),
        ("ingest:\n  settle_seconds: 1\n  poll: true\n  settle_seconds: 2\n", "ingest.settle_seconds", 2, 4),
        ("pipeline:\n  builtin:\n    mouth_gain: 1.2\n    mouth_gain: 0.5\n", "pipeline.builtin.mouth_gain", 3, 4),
    ],
)
def test_a_key_or_section_set_twice_names_both_lines(tmp_path: Path, text: str, key: str, first: int,
                                                     second: int) -> None:
    path = tmp_path / "twice.yaml"
    path.write_text(text)
    with pytest.raises(configmod.ConfigError) as info:
        configmod.load(path)
    message = str(info.value)
    assert message.startswith(f"{path}:{second}: {key}: ")
    assert f"set twice, on line {first} and on line {second}" in message


def test_a_key_set_twice_on_one_line_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "twice.yaml"
    path.write_text('ingest: {poll: true, "poll": false}\n')  # quoted or not, the same key
    with pytest.raises(configmod.ConfigError, match="ingest.poll: this key is set twice, on line 1: keep one"):
        configmod.load(path)


def test_a_key_set_twice_inside_a_list_item_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "twice.yaml"
    path.write_text('janitor:\n  retention:\n    rules:\n      - {match: "ann/*", days: 1, days: 30}\n')
    with pytest.raises(configmod.ConfigError, match=r"'days' is set twice, on line 4") as info:
        configmod.load(path)
    assert str(info.value).startswith(f"{path}:4: ")


def test_invalid_yaml_reports_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("paths:\n  inbox: [unclosed\n")
    with pytest.raises(configmod.ConfigError, match="not valid YAML"):
        configmod.load(path)


def test_cli_exits_2_on_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("logging:\n  level: LOUD\n")
    assert cli_main(["--config", str(path), "status"]) == 2
    err = capsys.readouterr().err
    assert "logging.level" in err and f"{path}:2" in err


def test_folders_that_cannot_be_created_are_config_errors(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    data = copy.deepcopy(configmod.DEFAULTS)
    path = tmp_path / "c.yaml"
    data["paths"] = {k: str(tmp_path / k) for k in data["paths"]}
    data["paths"]["outputs"] = str(blocker / "outputs")
    path.write_text(yaml.safe_dump(data))
    cfg = configmod.load(path)
    with pytest.raises(configmod.ConfigError, match="paths.outputs"):
        configmod.ensure_folders(cfg)


def _layout(tmp_path: Path, **paths: str) -> configmod.Config:
    """A config whose data folders live under *tmp_path*, with *paths* overriding some of them."""
    folders = {k: str(tmp_path / k) for k in configmod.DEFAULTS["paths"]}
    return configmod.load(None, required=False, overrides={"paths": {**folders, **paths}})


def test_a_layout_of_separate_real_folders_has_no_problems(tmp_path: Path) -> None:
    assert configmod.layout_problems(_layout(tmp_path)) == []


@pytest.mark.parametrize(
    ("paths", "key", "words"),
    [
        ({"outputs": "inbox/outputs"}, "paths.inbox", "overlaps paths.outputs: it contains"),
        ({"failed": "/"}, "paths.failed", "overlaps paths.outputs: it contains"),
        ({"failed": "outputs"}, "paths.outputs", "overlaps paths.failed: it is the same folder as"),
        ({"spool": "inbox"}, "paths.inbox", "overlaps paths.spool: it is the same folder as"),
        ({"avatars": "inbox/avatars"}, "paths.inbox", "overlaps paths.avatars: it contains"),
        ({"state": "spool/state"}, "paths.spool", "overlaps paths.state: it contains"),
    ],
)
def test_overlapping_data_folders_are_layout_problems(tmp_path: Path, paths: dict[str, str], key: str,
                                                      words: str) -> None:
    cfg = _layout(tmp_path, **{k: v if v.startswith("/") else str(tmp_path / v) for k, v in paths.items()})
    problems = configmod.layout_problems(cfg)
    assert problems and problems[0].key == key and words in str(problems[0])
    assert "Give each data folder its own place" in str(problems[0])
    with pytest.raises(configmod.ConfigError, match=words):
        configmod.check_layout(cfg)


def test_a_symlinked_outputs_is_a_layout_problem_also_through_a_symlinked_parent(tmp_path: Path) -> None:
    real = tmp_path / "disk2" / "outputs"
    real.mkdir(parents=True)
    (tmp_path / "outputs").symlink_to(real)
    [problem] = configmod.layout_problems(_layout(tmp_path))
    assert problem.key == "paths.outputs" and "is a symlink" in str(problem) and str(real) in str(problem)
    # A symlinked parent that lands the failed folder inside the inbox is found after resolving it.
    (tmp_path / "via").symlink_to(tmp_path / "inbox")
    [problem] = configmod.layout_problems(_layout(tmp_path, outputs=str(real), failed=str(tmp_path / "via" / "f")))
    assert problem.key == "paths.inbox" and "overlaps paths.failed: it contains" in str(problem)


def test_a_folder_bind_mounted_as_another_is_the_same_folder(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("a bind mount needs root (run the suite as root, as CI does)")
    for name in configmod.DEFAULTS["paths"]:
        (tmp_path / name).mkdir()
    mount = tmp_path / "mnt"
    mount.mkdir()
    done = subprocess.run(["mount", "--bind", str(tmp_path / "inbox"), str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {done.stderr.strip()}")
    try:
        [problem] = configmod.layout_problems(_layout(tmp_path, outputs=str(mount)))
    finally:
        subprocess.run(["umount", str(mount)], check=True)
    assert problem.key == "paths.outputs" and "overlaps paths.inbox: it is the same folder as" in str(problem)


@pytest.mark.parametrize("text", ["pipeline:\n  max_seconds: .inf\n", "pipeline:\n  max_pixels: 0\n",
                                  "pipeline:\n  max_seconds: .nan\n"])
def test_job_limits_must_be_real_positive_numbers(tmp_path: Path, text: str) -> None:
    """Issue 13.7: pipeline.max_seconds and pipeline.max_pixels bound what one job may ask of the server."""
    assert configmod.DEFAULTS["pipeline"]["max_seconds"] == 1800
    assert configmod.DEFAULTS["pipeline"]["max_pixels"] == 3840 * 2160
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(configmod.ConfigError, match=r"pipeline\.max_(seconds|pixels).*greater than 0"):
        configmod.load(path)


def test_archive_keys_are_read_into_typed_values_and_the_secret_is_never_shown(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("janitor:\n  retention:\n    rules: [{match: '*/bob/*', days: 30, archive_days: 1}]\n"
                    "  archive:\n    url: s3://videos/lipsync\n    endpoint_url: http://127.0.0.1:9000\n"
                    "    access_key_id: AKID\n    secret_access_key: s3cr3t-value\n    required: false\n")
    cfg = configmod.load(path)
    archive = cfg.janitor.archive
    assert (archive.url, archive.endpoint_url, archive.after_days, archive.delete_local, archive.required) == \
        ("s3://videos/lipsync", "http://127.0.0.1:9000", 2, True, False)
    assert cfg.janitor.retention.rules[0].archive_days == 1
    assert configmod.load(None, required=False).janitor.retention.rules == ()
    assert "s3cr3t-value" not in repr(archive) and "s3cr3t-value" not in repr(cfg.janitor)
