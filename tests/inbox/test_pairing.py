"""Pairing decisions, names and manifests: pure functions, no daemon."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon import names
from daemon.inbox.manifest import ManifestError, parse
from daemon.inbox.pairing import Claim, Entry, Fail, decide

NOW = 1_000_000.0
TIMEOUT = 3600.0
ENGINES = ["builtin", "command"]


def entries(*specs: tuple[str, bool] | str, age: float = 10.0, size: int = 100) -> dict[str, Entry]:
    out = {}
    for spec in specs:
        name, settled = (spec, True) if isinstance(spec, str) else spec
        out[name] = Entry(name=name, settled=settled, size=size, arrived=NOW - age)
    return out


def no_avatar(name: str) -> list[str]:
    return ["anna"]


def run(found: dict[str, Entry], avatar=no_avatar, manifests: dict[str, bytes] | None = None):
    def read(name: str):
        return parse((manifests or {})[name], names.parse(name).stem, ENGINES)

    return decide(found, now=NOW, pair_timeout=TIMEOUT, find_avatar=avatar, read_manifest=read)


def test_same_stem_pairs() -> None:
    assert run(entries("hello.wav", "hello.mp4")) == [Claim(stem="hello", audio="hello.wav", video="hello.mp4")]


def test_chinese_and_spaces_pair() -> None:
    [claim] = run(entries("产品 介绍 'v2'.mp3", "产品 介绍 'v2'.MOV"))
    assert isinstance(claim, Claim) and claim.stem == "产品 介绍 'v2'"


def test_waits_while_a_file_is_unsettled() -> None:
    assert run(entries("a.wav", ("a.mp4", False))) == []


def test_lone_file_waits_then_times_out() -> None:
    assert run(entries("a.wav", age=10)) == []
    [fail] = run(entries("a.wav", age=TIMEOUT + 1))
    assert isinstance(fail, Fail) and fail.files == ["a.wav"]
    assert "no video file named 'a' arrived within 60 minutes" in fail.reason


def test_two_audios_for_one_stem_is_ambiguous() -> None:
    [fail] = run(entries("a.wav", "a.mp3", "a.mp4"))
    assert isinstance(fail, Fail)
    assert sorted(fail.files) == ["a.mp3", "a.mp4", "a.wav"]
    assert "more than one audio file" in fail.reason


def test_unknown_type_and_empty_file_fail_at_once() -> None:
    found = entries("notes.docx")
    found["x.wav"] = Entry("x.wav", True, 0, NOW)
    decisions = run(found)
    reasons = {d.files[0]: d.reason for d in decisions if isinstance(d, Fail)}
    assert "not a supported audio or video file" in reasons["notes.docx"]
    assert "is empty (0 bytes)" in reasons["x.wav"]


def test_refused_files_fail_once_settled_and_never_pair() -> None:
    found = {"x.wav": Entry("x.wav", False, 10, NOW, problem="a symbolic link"), "x.mp4": Entry("x.mp4", True, 9, NOW)}
    assert run(found) == []
    found["x.wav"] = Entry("x.wav", True, 10, NOW, problem="a symbolic link")
    [fail] = run(found)
    assert isinstance(fail, Fail) and fail.reason == "a symbolic link" and fail.files == ["x.wav"]


def test_avatar_audio_uses_saved_avatar(tmp_path: Path) -> None:
    avatar = tmp_path / "anna.mp4"
    [claim] = run(entries("welcome@anna.wav"), avatar=lambda name: avatar if name == "anna" else [])
    assert claim == Claim(stem="welcome", audio="welcome@anna.wav", video=None, avatar=avatar)


def test_missing_avatar_lists_available() -> None:
    [fail] = run(entries("welcome@bob.wav"))
    assert isinstance(fail, Fail) and "'bob'" in fail.reason and "available: anna" in fail.reason


def test_manifest_names_files() -> None:
    manifest = b"audio: speech.mp3\nvideo: face.mp4\nname: promo\nengine: command\noptions: {x: 1}\n"
    [claim] = run(entries("job1.job.yaml", "speech.mp3", "face.mp4"), manifests={"job1.job.yaml": manifest})
    assert claim == Claim(stem="promo", audio="speech.mp3", video="face.mp4", manifest="job1.job.yaml",
                          engine="command", options={"x": 1})


def test_manifest_waits_for_its_files_then_times_out() -> None:
    manifest = b"audio: speech.mp3\nvideo: face.mp4\n"
    assert run(entries("j.job.yaml", "face.mp4"), manifests={"j.job.yaml": manifest}) == []
    [fail] = run(entries("j.job.yaml", "face.mp4", age=TIMEOUT + 5), manifests={"j.job.yaml": manifest})
    assert isinstance(fail, Fail) and "speech.mp3" in fail.reason and set(fail.files) == {"j.job.yaml", "face.mp4"}


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (b"audio: ../../etc/passwd.wav\nvideo: a.mp4\n", "is a path"),
        (b"audio: /etc/shadow.wav\nvideo: a.mp4\n", "is a path"),
        (b"audio: a.wav\nvideo: sub/a.mp4\n", "is a path"),
        (b"audio: a.wav\nvideo: a.mp4\nengine: evil\n", "not allowed"),
        (b"audio: a.wav\nvideo: a.mp4\nshell: rm -rf /\n", "unknown key"),
        (b"audio: a.wav\n", "exactly one of 'video'"),
        (b"audio: a.mp4\nvideo: a.mp4\n", "is not audio"),
        (b"a: &a [1,1,1,1,1,1,1,1,1]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
         b"d: [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n", "anchors/aliases"),
        (b"audio: [unclosed\n", "not valid YAML"),
        (b"- just\n- a list\n", "must be a mapping"),
        (b"x" * (70 * 1024), "larger than"),
    ],
)
def test_bad_manifests_are_refused(text: bytes, reason: str) -> None:
    with pytest.raises(ManifestError, match=reason):
        parse(text, "job", ENGINES)


DEEP_MANIFESTS = {
    "flow-lists": b"audio: a.wav\nvideo: a.mp4\noptions: " + b"[" * 3000 + b"]" * 3000 + b"\n",
    "flow-maps-64k": b"options: " + b"{a: " * 16000 + b"}" * 16000,
    "flow-one-per-line": b"options: " + b"[\n" * 20000 + b"]" * 20000,
    "block-lists": b"".join(b" " * i + b"- \n" for i in range(300)),
    "block-maps": b"".join(b" " * i + b"k:\n" for i in range(300)),
}


@pytest.mark.parametrize("kind", sorted(DEEP_MANIFESTS))
def test_deeply_nested_manifest_is_refused_quickly(kind: str) -> None:
    """A few KB of nesting once took 8-80 s and ended in RecursionError in the daemon's main loop."""
    import time

    text = DEEP_MANIFESTS[kind][:64 * 1024]
    started = time.monotonic()
    with pytest.raises(ManifestError, match="nests lists/mappings more than"):
        parse(text, "job", ENGINES)
    assert time.monotonic() - started < 1.0


def test_manifest_with_too_many_entries_is_refused_quickly() -> None:
    import time

    started = time.monotonic()
    with pytest.raises(ManifestError, match="more than 1000 entries"):
        parse(b"options: {x: [" + b",".join([b"1"] * 30000) + b"]}\n", "job", ENGINES)
    assert time.monotonic() - started < 1.5


def test_deep_manifest_is_refused_quickly_by_the_pure_python_parser_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without libyaml, PyYAML's own parser is used: bounded the same way (it is slower, so the bound matters)."""
    import time

    import yaml

    from daemon.inbox import manifest

    monkeypatch.setattr(manifest, "LOADER", yaml.SafeLoader)
    for text in DEEP_MANIFESTS.values():
        started = time.monotonic()
        with pytest.raises(ManifestError, match="nests lists/mappings more than"):
            parse(text[:64 * 1024], "job", ENGINES)
        assert time.monotonic() - started < 1.0


def test_manifest_swapped_for_a_fifo_after_its_check_does_not_hang(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The race between the lstat and the open, made to happen: a blocking open of a FIFO would never return."""
    import os
    import time

    from daemon.inbox import claim, ingest

    manifest = tmp_path / "j.job.yaml"
    manifest.write_text("audio: a.wav\nvideo: a.mp4\n")
    os.mkfifo(tmp_path / "fifo")
    real_check = claim.check_plain_file

    def check_then_swap(path: Path) -> os.stat_result:
        st = real_check(path)
        os.rename(tmp_path / "fifo", path)  # what another user's process could do right here
        return st

    monkeypatch.setattr(claim, "check_plain_file", check_then_swap)
    started = time.monotonic()
    with pytest.raises(ManifestError, match="not a regular file"):
        ingest._read_manifest(manifest, ENGINES)
    assert time.monotonic() - started < 1.0


def test_manifest_of_normal_depth_is_still_read() -> None:
    text = b"audio: a.wav\nvideo: a.mp4\noptions: {a: {b: {c: [1, [2, [3]]]}}}\n"
    assert parse(text, "job", ENGINES).options == {"a": {"b": {"c": [1, [2, [3]]]}}}


def test_bad_manifest_fails_the_manifest_only() -> None:
    found = entries("j.job.yaml", "a.wav", "a.mp4")
    decisions = run(found, manifests={"j.job.yaml": b"audio: ../../etc/x.wav\nvideo: a.mp4\n"})
    fails = [d for d in decisions if isinstance(d, Fail)]
    claims = [d for d in decisions if isinstance(d, Claim)]
    assert [f.files for f in fails] == [["j.job.yaml"]]
    assert claims == [Claim(stem="a", audio="a.wav", video="a.mp4")]


@pytest.mark.parametrize(
    ("name", "refused"),
    [("王小明", False), ("alice smith", False), ("o'brien \"q\"", False), ("a\nb", True), ("tab\there", True),
     (".hidden", True), ("..", True), ("a/b", True), ("", True), ("x" * 300, True)],
)
def test_name_refusals(name: str, refused: bool) -> None:
    assert (names.refusal(name) is not None) == refused
    assert "\n" not in names.printable(name) and "/" not in names.printable(name)


@pytest.mark.parametrize("name", [".a.wav.Xy12Zq", "a.wav.part", "a.mp4.tmp", "a.crdownload", "~lock.wav"])
def test_temp_names_are_ignored(name: str) -> None:
    assert names.is_temp_name(name)


def test_media_kinds() -> None:
    assert names.parse("x.WAV").kind == "audio"
    assert names.parse("x.webm").kind == "video"
    assert names.parse("x.job.yaml").kind == "manifest"
    assert names.parse("x.txt").kind == "other"
    assert names.parse("t@anna.wav").avatar == ("t", "anna")


def test_a_manifest_key_set_twice_is_refused_naming_both_lines() -> None:
    # Before, the second 'audio' silently won: the job rendered another file than the one first named.
    with pytest.raises(ManifestError, match=r"'audio' is set twice, on line 1 and on line 3"):
        parse(b"audio: speech.wav\nvideo: face.mp4\naudio: other.wav\n", "job", ENGINES)
