"""Real parts for the janitor, notify and metrics tests: a size-limited tmpfs, an HTTP sink, an SMTP sink,
and a builder for a tree of outputs with chosen ages."""

from __future__ import annotations

import contextlib
import copy
import email
import email.header
import email.policy
import http.server
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon import config as configmod

DAY = 86400


def make_config(base: Path, **overrides: Any) -> configmod.Config:
    """A validated config with every folder under *base*; overrides are merged (nested dicts)."""
    data: dict[str, Any] = {"paths": {k: str(base / k) for k in configmod.DEFAULTS["paths"]}}
    _merge(data, copy.deepcopy(overrides))
    cfg = configmod.load(None, required=False, overrides=data)
    for key in ("outputs", "failed", "spool", "state", "inbox"):
        Path(cfg["paths"][key]).mkdir(parents=True, exist_ok=True)
    return cfg


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def put(path: Path, age_days: float = 0.0, size: int = 1000, now: float | None = None) -> Path:
    """Create a file of *size* bytes whose mtime is *age_days* ago."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(os.urandom(size) if size < 4096 else b"\0" * size)
    when = (now or time.time()) - age_days * DAY
    os.utime(path, (when, when))
    return path


def output(outputs: Path, date: str, user: str, stem: str, age_days: float, size: int = 1000) -> list[Path]:
    """One published output: <stem>.mp4 (size bytes) + .json + .jpg, all *age_days* old."""
    folder = outputs / date / user
    return [put(folder / f"{stem}.mp4", age_days, size), put(folder / f"{stem}.json", age_days, 200),
            put(folder / f"{stem}.jpg", age_days, 300)]


@contextlib.contextmanager
def mounted(argv: list[str], target: Path, what: str) -> Iterator[Path]:
    """`mount *argv* target` for real (needs root), unmounted after; skips the test saying why when it cannot."""
    if os.geteuid() != 0:
        pytest.skip(f"{what} needs root (run the suite as root, as CI does)")
    done = subprocess.run(["mount", *argv, str(target)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot do {what} here: {done.stderr.strip()}")
    try:
        yield target
    finally:
        if subprocess.run(["umount", str(target)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(target)], capture_output=True)


def mounted_tmpfs(path: Path, size: str = "20m") -> contextlib.AbstractContextManager[Path]:
    """A real size-limited tmpfs at *path*."""
    path.mkdir(parents=True, exist_ok=True)
    return mounted(["-t", "tmpfs", "-o", f"size={size}", "tmpfs"], path, "mounting a tmpfs")


def fill(folder: Path, leave_bytes: int = 0) -> None:
    """Write into *folder* until the filesystem has at most leave_bytes available (real ENOSPC)."""
    chunk = b"\0" * (256 * 1024)
    n = 0
    while True:
        st = os.statvfs(folder)
        avail = st.f_bavail * st.f_frsize
        if avail <= leave_bytes:
            return
        want = min(len(chunk), avail - leave_bytes)
        try:
            with open(folder / f"filler-{n}", "wb") as handle:
                handle.write(chunk[:want])
        except OSError:
            return
        n += 1


class HttpSink:
    """An HTTP server on 127.0.0.1 that records every POST (path, headers, body) and answers *status*."""

    def __init__(self, status: int = 200, reply: bytes = b'{"errcode": 0, "errmsg": "ok"}', port: int = 0) -> None:
        self.requests: list[dict[str, Any]] = []
        self.status = status
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = int(self.headers.get("Content-Length", 0))
                sink.requests.append({"path": self.path, "headers": dict(self.headers),
                                      "body": self.rfile.read(length)})
                self.send_response(sink.status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> HttpSink:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def json_bodies(self) -> list[dict[str, Any]]:
        return [json.loads(r["body"]) for r in self.requests]


class SmtpSink:
    """aiosmtpd on 127.0.0.1: keeps every message it receives as an email.message.EmailMessage."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        self.messages: list[Any] = []
        self.envelopes: list[Any] = []
        sink = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
                sink.envelopes.append(envelope)
                sink.messages.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
                return "250 OK"

        self.port = free_port()
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)

    def __enter__(self) -> SmtpSink:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()

    def url(self, to: str = "ops@example.com", sender: str = "lipsyncd@example.com") -> str:
        """Apprise's plain-SMTP URL: mailto:// (no TLS; mode=insecure is its default) without a login."""
        return f"mailto://127.0.0.1:{self.port}?to={to}&from={sender}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def subject(message: Any) -> str:
    return str(email.header.make_header(email.header.decode_header(message["Subject"])))


def text_parts(message: Any) -> dict[str, str]:
    """content type -> decoded text of each text part."""
    return {part.get_content_type(): part.get_content() for part in message.walk()
            if part.get_content_maintype() == "text"}


@contextlib.contextmanager
def kept_logging() -> Iterator[None]:
    """Restore the root logger after code that calls daemon.log.setup() (janitor.main does)."""
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
        for handler in handlers:
            if handler not in root.handlers:
                root.addHandler(handler)
        root.setLevel(level)


def copy_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, symlinks=True, copy_function=shutil.copy2)
