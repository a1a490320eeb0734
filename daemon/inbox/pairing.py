"""Pairing: which settled files in one inbox folder form a job, which must fail, which wait.

A pure function of what is in the folder (and the clock), so it is easy to test and to re-run after a
restart: same user + same stem; or a <stem>.job.yaml manifest; or <title>@<avatar>.<audio ext> with a
saved avatar video.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon import names
from daemon.inbox.manifest import Manifest, ManifestError


@dataclass(frozen=True)
class Entry:
    """One file in an inbox folder as the watcher last saw it."""

    name: str
    settled: bool  # size and mtime unchanged for the settle time
    size: int
    arrived: float  # wall-clock time it appeared: max(mtime, ctime), so `cp -p` cannot fake an old age
    problem: str | None = None  # set when the file must never be opened (symlink, hard link, device...)


@dataclass(frozen=True)
class Claim:
    stem: str  # the job's (and output's) name
    audio: str
    video: str | None  # None when an avatar is used
    avatar: Path | None = None
    manifest: str | None = None
    engine: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def files(self) -> list[str]:
        """The inbox files this job consumes."""
        return [n for n in (self.audio, self.video, self.manifest) if n]


@dataclass(frozen=True)
class Fail:
    stem: str
    files: list[str]
    reason: str  # plain words: what went wrong and what to do


Decision = Claim | Fail
FindAvatar = Callable[[str], "Path | None | list[str]"]  # a path, or the names available when missing
ReadManifest = Callable[[str], Manifest]


def decide(entries: dict[str, Entry], *, now: float, pair_timeout: float, find_avatar: FindAvatar,
           read_manifest: ReadManifest) -> list[Decision]:
    """Decisions for one inbox folder. Files in no decision keep waiting."""
    decisions: list[Decision] = []
    taken: set[str] = set()

    for entry in entries.values():
        if entry.problem:
            taken.add(entry.name)
            if not entry.settled:
                continue  # moved only once the writer is done, so no copy tool sees its file vanish
            decisions.append(Fail(names.printable(names.parse(entry.name).stem), [entry.name], entry.problem))

    for entry in _settled(entries, taken):
        drop = names.parse(entry.name)
        if drop.kind == "other":
            supported = ", ".join(names.AUDIO_EXTENSIONS + names.VIDEO_EXTENSIONS)
            decisions.append(Fail(names.printable(drop.stem), [entry.name],
                                  f"{names.quoted(entry.name)} is not a supported audio or video file "
                                  f"(supported: {supported}, plus <name>{names.MANIFEST_SUFFIX} manifests). "
                                  "Convert it and drop it again."))
            taken.add(entry.name)
        elif entry.size == 0:
            decisions.append(Fail(names.printable(drop.stem), [entry.name],
                                  f"{names.quoted(entry.name)} is empty (0 bytes): the copy probably failed. "
                                  "Drop it again."))
            taken.add(entry.name)
        elif drop.kind == "manifest":
            decisions.extend(_manifest(entry, entries, taken, now, pair_timeout, find_avatar, read_manifest))

    by_stem: dict[str, list[Entry]] = {}
    for entry in entries.values():
        drop = names.parse(entry.name)
        if entry.name not in taken and drop.kind in ("audio", "video"):
            by_stem.setdefault(drop.stem, []).append(entry)
    for stem, group in by_stem.items():
        decision = _stem_group(stem, group, now, pair_timeout, find_avatar)
        if decision is not None:
            decisions.append(decision)
    return decisions


def _settled(entries: dict[str, Entry], taken: set[str]) -> list[Entry]:
    return [e for e in entries.values() if e.settled and e.name not in taken]


def _stem_group(stem: str, group: list[Entry], now: float, pair_timeout: float,
                find_avatar: FindAvatar) -> Decision | None:
    if any(not e.settled for e in group):
        return None  # wait: something with this name is still being copied
    files = sorted(e.name for e in group)
    audios = [e.name for e in group if names.parse(e.name).kind == "audio"]
    videos = [e.name for e in group if names.parse(e.name).kind == "video"]
    label = names.printable(stem)
    if len(audios) > 1 or len(videos) > 1:
        which = "audio" if len(audios) > 1 else "video"
        many = audios if len(audios) > 1 else videos
        listed = ", ".join(map(names.quoted, sorted(many)))
        return Fail(label, files, f"more than one {which} file is named {names.quoted(stem)} ({listed}), so "
                                  "lipsyncd cannot tell which to use. Keep one and drop the pair again.")
    if audios and videos:
        return Claim(stem=stem, audio=audios[0], video=videos[0])
    if audios:
        avatar = names.parse(audios[0]).avatar
        if avatar is not None:
            title, avatar_name = avatar
            found = find_avatar(avatar_name)
            if isinstance(found, Path):
                return Claim(stem=title, audio=audios[0], video=None, avatar=found)
            available = ", ".join(map(names.escape, found)) if found else "none saved yet"
            return Fail(label, files, f"{names.quoted(audios[0])} asks for the avatar {names.quoted(avatar_name)}, "
                                      f"but there is no saved avatar video of that name (available: {available}). "
                                      f"Save the video as avatars/<user>/{names.escape(avatar_name)}.mp4 or rename the "
                                      "audio, then drop it again.")
    lone = group[0]
    if now - lone.arrived >= pair_timeout:
        missing = "video" if audios else "audio"
        minutes = pair_timeout / 60
        shown = names.escape(stem)
        return Fail(label, files, f"no {missing} file named '{shown}' arrived within {minutes:g} minutes of "
                                  f"{names.quoted(lone.name)}. Drop both files with the same name (e.g. {shown}.wav "
                                  f"and {shown}.mp4) into the same folder.")
    return None


def _manifest(entry: Entry, entries: dict[str, Entry], taken: set[str], now: float, pair_timeout: float,
              find_avatar: FindAvatar, read_manifest: ReadManifest) -> list[Decision]:
    stem = names.parse(entry.name).stem
    label = names.printable(stem)
    try:
        manifest = read_manifest(entry.name)
    except ManifestError as exc:
        taken.add(entry.name)
        why = names.escape(str(exc))  # it may quote the manifest's own text
        return [Fail(label, [entry.name], f"the manifest {names.quoted(entry.name)} cannot be used: {why}. Fix it "
                                          "and drop it again (see the README for the manifest format).")]
    wanted = [n for n in (manifest.audio, manifest.video) if n]
    present = [n for n in wanted if n in entries and n not in taken]
    taken.add(entry.name)
    taken.update(present)
    if len(present) < len(wanted):
        if now - entry.arrived >= pair_timeout:
            missing = ", ".join(n for n in wanted if n not in present)
            return [Fail(label, [entry.name, *present],
                         f"the manifest {names.quoted(entry.name)} names {missing}, which did not arrive within "
                         f"{pair_timeout / 60:g} minutes. Drop the missing file(s) with the manifest again.")]
        return []
    if any(not entries[n].settled for n in present):
        return []
    avatar = None
    if manifest.avatar is not None:
        found = find_avatar(manifest.avatar)
        if not isinstance(found, Path):
            available = ", ".join(map(names.escape, found)) if found else "none saved yet"
            return [Fail(label, [entry.name, *present],
                         f"the manifest {names.quoted(entry.name)} asks for the avatar "
                         f"{names.quoted(manifest.avatar)}, which does not exist "
                         f"(available: {available}).")]
        avatar = found
    return [Claim(stem=manifest.name, audio=manifest.audio, video=manifest.video, avatar=avatar,
                  manifest=entry.name, engine=manifest.engine, options=manifest.options)]


def find_avatar_in(avatars: Path, user: str, video_extensions: Sequence[str] = names.VIDEO_EXTENSIONS) -> FindAvatar:
    """A FindAvatar looking in avatars/<user>/ first, then the shared avatars/ folder; never follows symlinks."""

    def find(name: str) -> Path | list[str]:
        for folder in (avatars / user, avatars):
            for ext in video_extensions:
                for candidate in (folder / f"{name}.{ext}", folder / f"{name}.{ext.upper()}"):
                    if _is_plain_file(candidate):
                        return candidate
        available: set[str] = set()
        for folder in (avatars / user, avatars):
            try:
                for child in folder.iterdir():
                    drop = names.parse(child.name)
                    if drop.kind == "video" and _is_plain_file(child):
                        available.add(drop.stem)
            except OSError:
                continue
        return sorted(available)

    return find


def _is_plain_file(path: Path) -> bool:
    import stat

    try:
        st = path.lstat()
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode)
