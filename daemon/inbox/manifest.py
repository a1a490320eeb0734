"""Job manifests: <stem>.job.yaml names the files of a job and its options.

    audio: speech.mp3        # a file in the same inbox folder
    video: face.mp4          # or instead:  avatar: anna   (avatars/<user>/anna.* or avatars/anna.*)
    name: welcome            # the output's name (default: the manifest's stem)
    engine: wav2lip          # optional; one of pipeline.allowed_engines
    options: {mouth_gain: 1.2}

A manifest is untrusted input: it is size-limited, may not use YAML anchors/aliases (the "billion
laughs" bomb), may not nest deeper than MAX_DEPTH, must be read within MAX_SECONDS, and may only name plain
files in its own folder or a saved avatar, never a path. The bounds are checked on the event stream before
anything is built: PyYAML's scanner slows quadratically with flow nesting and its composer recurses, so a
few KB of "[[[[..." would otherwise take minutes and end in RecursionError, in the daemon's main loop.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from daemon import names
from daemon.config import UniqueKeyLoader

MAX_BYTES = 64 * 1024
# A real manifest nests 2 levels (options: {...}); engine options may add a few. Deeper is refused unread.
MAX_DEPTH = 16
# Scalars, keys and collections together; a real manifest has a few dozen.
MAX_EVENTS = 1_000
# Reading one manifest may hold up the ingest loop at most this long (a real one takes a millisecond).
MAX_SECONDS = 1.0
# libyaml's parser for the bounds check when PyYAML has it: some 50x faster on hostile input than the pure-Python
# one, which stays the fallback (bounded by the limits above all the same). What passes is small and shallow,
# so building it with UniqueKeyLoader (pure Python) is quick.
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
KEYS = ("audio", "video", "avatar", "name", "engine", "options")


class ManifestError(ValueError):
    """A manifest that cannot be used; the message says why in plain words."""


@dataclass(frozen=True)
class Manifest:
    audio: str
    video: str | None
    avatar: str | None
    name: str
    engine: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


def parse(text: bytes, stem: str, allowed_engines: Sequence[str]) -> Manifest:
    if len(text) > MAX_BYTES:
        raise ManifestError(f"the manifest is larger than {MAX_BYTES // 1024} KiB")
    try:
        source = text.decode("utf-8")
    except UnicodeDecodeError:
        raise ManifestError("the manifest is not UTF-8 text") from None
    try:
        _check_events(source)  # libyaml (LOADER), fast, refuses what is too deep or too big before it is built
        data = yaml.load(source, Loader=UniqueKeyLoader)  # a SafeLoader that refuses duplicate keys
    except yaml.YAMLError as exc:
        if "nesting depth" in str(getattr(exc, "problem", "")):  # libyaml's own limit, met while reading ahead
            raise ManifestError(f"the manifest nests lists/mappings more than {MAX_DEPTH} levels deep") from None
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ManifestError(f"the manifest is not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise ManifestError("the manifest must be a mapping such as 'audio: a.wav' and 'video: b.mp4'")
    unknown = sorted(str(k) for k in data if k not in KEYS)
    if unknown:
        raise ManifestError(f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(KEYS)}")

    audio = _file_name(data, "audio", "audio")
    video = _file_name(data, "video", "video") if data.get("video") is not None else None
    avatar = data.get("avatar")
    if (video is None) == (avatar is None):
        raise ManifestError("the manifest must name exactly one of 'video' (a file) or 'avatar' (a saved avatar)")
    if avatar is not None and (not isinstance(avatar, str) or names.refusal(avatar)):
        raise ManifestError(f"avatar {avatar!r} is not a plain avatar name")
    name = data.get("name", stem)
    if not isinstance(name, str) or names.refusal(name):
        raise ManifestError(f"name {name!r} cannot be used: {names.refusal(str(name)) or 'it must be text'}")
    engine = data.get("engine")
    if engine is not None and engine not in allowed_engines:
        raise ManifestError(f"engine {engine!r} is not allowed here; allowed: {', '.join(allowed_engines)}")
    options = data.get("options") or {}
    if not isinstance(options, dict):
        raise ManifestError("options must be a mapping")
    return Manifest(audio=audio, video=video, avatar=avatar, name=name, engine=engine, options=options)


def _check_events(source: str) -> None:
    """Refuse anchors/aliases, nesting deeper than MAX_DEPTH, and more than MAX_EVENTS or MAX_SECONDS of work."""
    deadline = time.monotonic() + MAX_SECONDS
    depth = 0
    for count, event in enumerate(yaml.parse(source, Loader=LOADER)):
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise ManifestError("the manifest uses YAML anchors/aliases (&, *), which are not allowed")
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise ManifestError(f"the manifest nests lists/mappings more than {MAX_DEPTH} levels deep")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
        if count > MAX_EVENTS:
            raise ManifestError(f"the manifest has more than {MAX_EVENTS} entries")
        if time.monotonic() > deadline:
            raise ManifestError(f"the manifest could not be read within {MAX_SECONDS:g} s; keep it short and simple")


def _file_name(data: dict[str, Any], key: str, kind: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise ManifestError(f"'{key}' must name a file in the same folder as the manifest")
    if "/" in value or "\\" in value or value in (".", "..") or value.startswith("~"):
        raise ManifestError(f"'{key}: {value}' is a path; a manifest may only name files in its own folder")
    why = names.refusal(value)
    if why:
        raise ManifestError(f"'{key}: {value!r}' cannot be used: {why}")
    if names.parse(value).kind != kind:
        wanted = names.AUDIO_EXTENSIONS if kind == "audio" else names.VIDEO_EXTENSIONS
        raise ManifestError(f"'{key}: {value}' is not {kind} (expected one of .{', .'.join(wanted)})")
    return value
