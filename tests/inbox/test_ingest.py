"""The real daemon against real writers (cp, mv, rsync, a slow writer) and real bad input.

One daemon serves the module (command engine: ffmpeg muxing the audio onto the video); each test uses
its own user folder, so the tests do not see each other's drops.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests import media
from tests.daemon_harness import Daemon, drop_pair, failures, finished, outputs, wait_for, write_config

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("daemon")
    config = write_config(root, ingest={"settle_seconds": 1, "pair_timeout_minutes": 10, "rescan_seconds": 5})
    daemon = Daemon(config).start()
    yield root, daemon
    daemon.stop()


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("pair")
    return media.tone(folder / "a.wav", seconds=1.0), media.color_clip(folder / "v.mp4", seconds=1.0)


def user_outputs(root: Path, user: str) -> list[Path]:
    return [p for p in outputs(root) if p.parent.name == user]


def user_failures(root: Path, user: str) -> list[Path]:
    return [p for p in failures(root) if p.parent.name == user]


def wait_output(root: Path, user: str, count: int = 1, timeout: float = 30) -> list[Path]:
    return wait_for(lambda: len(user_outputs(root, user)) >= count and user_outputs(root, user), timeout,
                    f"{count} output(s) for {user}")


def wait_failure(root: Path, user: str, timeout: float = 30) -> Path:
    return wait_for(lambda: user_failures(root, user) and user_failures(root, user)[0], timeout,
                    f"a failure for {user}")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_cp_pair_becomes_dated_output_with_record_and_poster(env, pair) -> None:
    root, _ = env
    audio, video = pair
    drop_pair(root / "inbox" / "cp", "hello", audio, video)
    [out] = wait_output(root, "cp")
    assert out.parent.parent.name == time.strftime("%Y-%m-%d")
    assert out.name == "hello.mp4"
    wait_for(lambda: out in finished(root), 30, "the sync score and the poster, added after publishing")
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["user"] == "cp" and record["engine"] == "command" and record["device"] == "cpu"
    assert record["inputs"]["audio"] == {"name": "hello.wav", "size": audio.stat().st_size, "sha256": sha(audio)}
    assert record["inputs"]["video"]["sha256"] == sha(video)
    assert record["timings"]["engine"] > 0
    assert out.with_suffix(".jpg").read_bytes()[:2] == b"\xff\xd8"
    probe = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=codec_type", "-of", "csv=p=0",
                            str(out)], capture_output=True, text=True, check=True)
    assert sorted(probe.stdout.split()) == ["audio", "video"]
    assert not list((root / "inbox" / "cp").iterdir()), "inputs are consumed once the output exists"


def test_files_in_inbox_root_belong_to_default_user(env, pair) -> None:
    root, _ = env
    audio, video = pair
    drop_pair(root / "inbox", "rootdrop", audio, video)
    outs = wait_for(lambda: [p for p in outputs(root) if p.name == "rootdrop.mp4"], 30, "root drop output")
    assert outs[0].parent.name == "shared"


def test_mv_from_same_filesystem(env, pair) -> None:
    root, _ = env
    audio, video = pair
    staging = root / "staging-mv"
    staging.mkdir()
    shutil.copy(audio, staging / "moved.wav")
    shutil.copy(video, staging / "moved.mp4")
    (root / "inbox" / "mv").mkdir()
    subprocess.run(["mv", str(staging / "moved.mp4"), str(staging / "moved.wav"), str(root / "inbox" / "mv")],
                   check=True)
    [out] = wait_output(root, "mv")
    assert out.name == "moved.mp4"


@pytest.mark.parametrize("mode", ["temp-file", "inplace"])
def test_rsync(env, pair, mode: str) -> None:
    root, _ = env
    audio, video = pair
    src = root / f"rsync-src-{mode}"
    src.mkdir()
    shutil.copy(audio, src / "synced.wav")
    shutil.copy(video, src / "synced.mp4")
    user = f"rsync-{mode}"
    (root / "inbox" / user).mkdir()
    extra = ["--inplace"] if mode == "inplace" else []
    subprocess.run(["rsync", "-a", *extra, f"{src}/", str(root / "inbox" / user)], check=True)
    [out] = wait_output(root, user)
    assert json.loads(out.with_suffix(".json").read_text())["inputs"]["video"]["sha256"] == sha(video)


def test_slow_writer_is_not_taken_before_its_last_byte(env, pair, tmp_path: Path) -> None:
    """1 MB every 0.5 s for 10 s, closing the file after each chunk: no job may start before the last byte."""
    root, _ = env
    _, video = pair
    big = media.tone(tmp_path / "long.wav", seconds=330)  # 16 kHz? ffmpeg's default: 44.1 kHz mono s16 -> 29 MB
    data = big.read_bytes()[: 20 * 1024 * 1024]
    folder = root / "inbox" / "slow"
    folder.mkdir()
    shutil.copy(video, folder / "slow.mp4")
    target = folder / "slow.wav"
    chunk = 1024 * 1024
    last_write = 0.0
    for offset in range(0, len(data), chunk):
        with open(target, "ab") as handle:
            handle.write(data[offset:offset + chunk])
        last_write = time.time()
        time.sleep(0.5)
    [out] = wait_output(root, "slow", timeout=60)
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["created"] > last_write, "the job was claimed before the writer finished"
    assert record["inputs"]["audio"]["size"] == len(data)
    assert not user_failures(root, "slow")


def test_unicode_spaces_and_quotes_in_names(env, pair) -> None:
    root, _ = env
    audio, video = pair
    stem = "产品介绍 \"第二版\" it's"
    drop_pair(root / "inbox" / "王小明", stem, audio, video)
    [out] = wait_output(root, "王小明")
    assert out.name == f"{stem}.mp4"


def test_same_pair_dropped_twice_gives_two_outputs_never_overwrites(env, pair) -> None:
    root, _ = env
    audio, video = pair
    drop_pair(root / "inbox" / "twice", "again", audio, video)
    wait_output(root, "twice", 1)
    drop_pair(root / "inbox" / "twice", "again", audio, video)
    outs = wait_output(root, "twice", 2)
    assert sorted(p.name for p in outs) == ["again-2.mp4", "again.mp4"]
    ids = {json.loads(p.with_suffix(".json").read_text())["job_id"] for p in outs}
    assert len(ids) == 2


def error_of(folder: Path) -> str:
    return (folder / "error.txt").read_text(encoding="utf-8")


def test_newline_in_name_is_refused_with_an_error(env, pair) -> None:
    root, _ = env
    audio, video = pair
    folder = root / "inbox" / "newline"
    folder.mkdir()
    shutil.copy(audio, folder / "bad\nname.wav")
    failed = wait_failure(root, "newline")
    assert "control character" in error_of(failed)
    assert not list(folder.iterdir())
    kept = [p for p in failed.iterdir() if p.suffix == ".wav"]
    assert len(kept) == 1 and kept[0].read_bytes() == audio.read_bytes()


def lipsyncd(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(Path(os.sys.executable).parent / "lipsyncd"), "--config", str(root / "lipsyncd.yaml"),
                           *args], capture_output=True, text=True, timeout=60)


def test_folder_name_not_utf8_is_failed_escaped_and_can_be_retried(env, pair) -> None:
    """A Latin-1 folder name once crashed failure filing (UnicodeEncodeError): no error.txt, no job.json."""
    root, daemon = env
    audio, video = pair
    folder = os.fsencode(root / "inbox") + b"/caf\xe9-latin1"
    os.mkdir(folder)
    shutil.copy(video, folder + b"/n.mp4")
    shutil.copy(audio, folder + b"/n.wav")
    os.mkdir(os.fsencode(root / "inbox") + b"/latin1-file")
    shutil.copy(audio, os.fsencode(root / "inbox") + b"/latin1-file/bad\xff.wav")
    both = wait_for(lambda: len(user_failures(root, "caf%E9-latin1")) == 2 and user_failures(root, "caf%E9-latin1"),
                    30, "both files of the Latin-1 folder in failed/")
    for failed in both:  # each file of a refused folder is filed on its own
        text = error_of(failed)
        assert "not valid UTF-8" in text and "User:    caf%E9-latin1" in text
        record = json.loads((failed / "job.json").read_text(encoding="utf-8"))
        assert record["user"] == "caf%E9-latin1" and len(record["files"]) == 1
    assert sorted(p.name for f in both for p in f.iterdir() if p.suffix != ".txt" and p.name != "job.json") \
        == ["n.mp4", "n.wav"]
    # A saved avatar whose name is not UTF-8 is listed, escaped, when another one is asked for.
    avatars = os.fsencode(root / "avatars") + b"/latin1-avatar"
    os.makedirs(avatars)
    shutil.copy(video, avatars + b"/ann\xe9.mp4")
    (root / "inbox" / "latin1-avatar").mkdir()
    shutil.copy(audio, root / "inbox" / "latin1-avatar" / "hi@bob.wav")
    assert "available: ann%E9" in error_of(wait_failure(root, "latin1-avatar"))
    bad_file = wait_failure(root, "latin1-file")
    assert (bad_file / "bad%FF.wav").read_bytes() == audio.read_bytes()
    assert "'bad%FF.wav'" in error_of(bad_file)
    status = lipsyncd(root, "status", "--json")
    assert status.returncode == 0, status.stderr
    assert any(f["user"] == "caf%E9-latin1" for f in json.loads(status.stdout)["recent_failures"])
    assert "Logging error" not in daemon.log() and "UnicodeEncodeError" not in daemon.log()
    # Retried, the files go to the escaped name's folder, a valid user name, and the output is filed under it.
    for failed in both:
        retried = lipsyncd(root, "retry", str(failed))
        assert retried.returncode == 0, retried.stderr
    [out] = wait_output(root, "caf%E9-latin1")
    assert json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))["user"] == "caf%E9-latin1"


def test_user_names_cannot_forge_log_lines(env, pair) -> None:
    """A folder named with a newline once wrote a second log line of its own choosing; tabs went through too."""
    from daemon.log import fields

    root, daemon = env
    audio, _ = pair
    forged = "CRITICAL lipsyncd: forged by a folder name"
    for user in (f"evil\n{forged}", "tab\tuser"):
        folder = root / "inbox" / user
        folder.mkdir()
        shutil.copy(audio, folder / "x.wav")
    # A manifest's own text is quoted back in its error: a YAML "\n" escape must not forge a line either.
    (root / "inbox" / "yaml-newline").mkdir()
    (root / "inbox" / "yaml-newline" / "m.job.yaml").write_text(f'audio: "x\\n{forged}/a.wav"\nvideo: v.mp4\n')
    wait_failure(root, "yaml-newline")
    wait_failure(root, f"evil%0A{forged}")
    wait_failure(root, "tab%09user")
    lines = daemon.log().splitlines()
    assert not [line for line in lines if line.startswith("CRITICAL")]
    assert len([line for line in lines if f"[evil%0A{forged} pair]" in line]) == 1
    assert len([line for line in lines if "[tab%09user pair]" in line]) == 1
    assert "\t" not in daemon.log()
    assert fields(user="a\nb\tc") == {"user": "a%0Ab%09c"}  # the journald field LIPSYNC_USER as well


def test_symlink_to_shadow_is_never_followed(env, pair) -> None:
    root, _ = env
    _, video = pair
    folder = root / "inbox" / "symlink"
    folder.mkdir()
    before = Path("/etc/shadow").stat() if Path("/etc/shadow").exists() else None
    os.symlink("/etc/shadow", folder / "x.wav")
    shutil.copy(video, folder / "x.mp4")
    failed = wait_failure(root, "symlink")
    assert "symbolic link" in error_of(failed)
    moved = failed / "x.wav"
    assert moved.is_symlink() and os.readlink(moved) == "/etc/shadow"
    if before is not None:
        assert Path("/etc/shadow").stat().st_mtime == before.st_mtime
    assert not user_outputs(root, "symlink")


def test_hard_link_is_refused(env, pair, tmp_path: Path) -> None:
    root, _ = env
    audio, video = pair
    folder = root / "inbox" / "hardlink"
    folder.mkdir()
    outside = root / "outside.wav"
    shutil.copy(audio, outside)
    os.link(outside, folder / "h.wav")
    failed = wait_failure(root, "hardlink")
    assert "hard link" in error_of(failed)
    assert outside.read_bytes() == audio.read_bytes()


def test_zero_byte_file_fails_plainly(env) -> None:
    root, _ = env
    folder = root / "inbox" / "empty"
    folder.mkdir()
    (folder / "e.wav").write_bytes(b"")
    failed = wait_failure(root, "empty")
    assert "is empty (0 bytes)" in error_of(failed)


@pytest.mark.parametrize("kind", ["text-as-mp4", "truncated-mp4", "audio-only-mp4"])
def test_broken_videos_end_in_failed_with_inputs_kept(env, pair, tmp_path: Path, kind: str) -> None:
    root, _ = env
    audio, video = pair
    bad = tmp_path / "bad.mp4"
    if kind == "text-as-mp4":
        bad.write_text("this is not a video\n")
    elif kind == "truncated-mp4":
        big = media.face_clip(tmp_path / "big.mp4", seconds=2, size=(160, 160))
        bad.write_bytes(big.read_bytes()[: big.stat().st_size // 3])
    else:
        media.convert(audio, bad, "-c:a", "aac")
    user = f"broken-{kind}"
    drop_pair(root / "inbox" / user, "b", audio, bad)
    failed = wait_failure(root, user)
    text = error_of(failed)
    assert "What went wrong" in text and "lipsyncd retry" in text
    assert (failed / "b.mp4").read_bytes() == bad.read_bytes()
    assert (failed / "b.wav").read_bytes() == audio.read_bytes()
    assert json.loads((failed / "job.json").read_text())["error"]
    assert not user_outputs(root, user)


def test_manifest_pairs_differently_named_files(env, pair) -> None:
    root, _ = env
    audio, video = pair
    folder = root / "inbox" / "manifest"
    folder.mkdir()
    shutil.copy(audio, folder / "speech.wav")
    shutil.copy(video, folder / "face.mp4")
    (folder / "promo.job.yaml").write_text("audio: speech.wav\nvideo: face.mp4\nname: 宣传片\n")
    [out] = wait_output(root, "manifest")
    assert out.name == "宣传片.mp4"


@pytest.mark.parametrize("text,expect", [
    ("audio: ../../etc/x.wav\nvideo: f.mp4\n", "is a path"),
    ("a: &a [x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a]\nc: [*b,*b,*b,*b,*b,*b,*b,*b]\n", "anchors"),
    ("options: {x: [" + ",".join(["1"] * 20000) + "]}\n", "more than 1000 entries"),
    ("audio: a.wav\nvideo: a.mp4\n#" + "x" * 70000 + "\n", "larger than 64 KiB"),
])
def test_hostile_manifests_fail_and_touch_nothing_outside(env, text: str, expect: str) -> None:
    root, _ = env
    user = "hostile-" + hashlib.md5(text.encode()).hexdigest()[:6]
    folder = root / "inbox" / user
    folder.mkdir()
    (folder / "evil.job.yaml").write_text(text)
    failed = wait_failure(root, user)
    assert expect in error_of(failed)


def test_deep_manifest_fails_its_drop_and_holds_up_no_one(env, pair) -> None:
    """A few KB of YAML nesting once raised RecursionError out of the main loop at every rescan, blocking it."""
    root, daemon = env
    audio, video = pair
    folder = root / "inbox" / "deep-yaml"
    folder.mkdir()
    (folder / "deep.job.yaml").write_bytes(b"audio: a.wav\nvideo: a.mp4\noptions: " + b"[" * 4000 + b"]" * 4000)
    drop_pair(root / "inbox" / "next-to-deep", "n", audio, video)
    failed = wait_failure(root, "deep-yaml", timeout=20)
    assert "nests lists/mappings more than" in error_of(failed)
    wait_output(root, "next-to-deep", timeout=20)
    assert not (folder / "deep.job.yaml").exists()
    assert "RecursionError" not in daemon.log() and "carrying on" not in daemon.log()


def test_avatar_audio_uses_saved_avatar_and_keeps_it(env, pair) -> None:
    root, _ = env
    audio, video = pair
    avatar = root / "avatars" / "avatar-user" / "anna.mp4"
    avatar.parent.mkdir(parents=True)
    shutil.copy(video, avatar)
    folder = root / "inbox" / "avatar-user"
    folder.mkdir()
    shutil.copy(audio, folder / "welcome@anna.wav")
    [out] = wait_output(root, "avatar-user")
    assert out.name == "welcome.mp4"
    assert avatar.read_bytes() == video.read_bytes()


def test_status_json_reports_the_daemon(env) -> None:
    root, _ = env
    done = subprocess.run([str(Path(os.sys.executable).parent / "lipsyncd"), "--config", str(root / "lipsyncd.yaml"),
                           "status", "--json"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert status["queue"]["queued"] >= 0
    assert any(w["device"] == "cpu" and not w["stale"] for w in status["workers"])
    assert status["recent_failures"], "earlier tests left failures to report"
    assert status["disk"]
