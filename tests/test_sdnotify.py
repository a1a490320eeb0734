"""sd_notify(3) from the real daemon, received on a datagram socket the test binds, as systemd would.

The socket has SO_PASSCRED on, so every message carries the sender's pid: with NotifyAccess=main,
systemd only listens to the main process, and so does this test. WATCHDOG_PID is set to the daemon's
own pid by a shell that execs into it, the way systemd sets it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.daemon_harness import drop_pair, outputs, slow_mux_argv, terminate, wait_for, write_config

REPO = Path(__file__).resolve().parent.parent
WATCHDOG_USEC = 2_000_000  # what WatchdogSec=2 would set; the daemon must ping at least this often


@dataclass
class Message:
    at: float
    pid: int
    fields: dict[str, str]
    workers: list[dict] = field(default_factory=list)  # worker heartbeats seen when the message arrived


class NotifySocket:
    """A bound AF_UNIX datagram socket collecting sd_notify messages with their sender pids."""

    def __init__(self, spool: Path) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="sdn", dir="/tmp"))  # short: sun_path holds 108 bytes
        self.path = self.dir / "notify"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.settimeout(0.2)
        self.spool = spool
        self.messages: list[Message] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        ucred = struct.calcsize("3i")
        while not self._stop.is_set():
            try:
                data, ancdata, _, _ = self.sock.recvmsg(65536, socket.CMSG_SPACE(ucred))
            except TimeoutError:
                continue
            pid = -1
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("3i", payload[:ucred])[0]
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            workers = []
            if "READY" in fields:  # what the workers had reported at the moment READY=1 arrived
                for beat in (self.spool / ".workers").glob("*.json"):
                    try:
                        workers.append(json.loads(beat.read_text()))
                    except (OSError, ValueError):
                        continue
            self.messages.append(Message(time.monotonic(), pid, fields, workers))

    def from_pid(self, pid: int, key: str | None = None) -> list[Message]:
        return [m for m in list(self.messages) if m.pid == pid and (key is None or key in m.fields)]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()
        self.path.unlink(missing_ok=True)
        self.dir.rmdir()


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "spool")
    yield sock
    sock.close()


def start_daemon(config: Path, notify: NotifySocket, watchdog_usec: int | None) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
    env["NOTIFY_SOCKET"] = str(notify.path)
    if watchdog_usec:
        env["WATCHDOG_USEC"] = str(watchdog_usec)
    log = open(config.parent / "daemon.log", "ab")  # noqa: SIM115 - handed to the child, closed by stop()
    # $$ is the shell's pid, which exec hands on to the daemon: WATCHDOG_PID names the main process.
    argv = ["sh", "-c", 'export WATCHDOG_PID=$$; exec "$@"', "sh",
            sys.executable, "-m", "daemon.cli", "--config", str(config), "run"]
    if not watchdog_usec:
        argv[2] = 'exec "$@"'
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    return proc


def daemon_log(config: Path) -> str:
    return (config.parent / "daemon.log").read_text(errors="replace")


def expect(predicate: Callable[[], object], timeout: float, what: str, notify: NotifySocket, config: Path) -> None:
    """wait_for, with what was received and what the daemon logged when it times out."""
    try:
        wait_for(predicate, timeout, what)
    except AssertionError as exc:
        received = "\n".join(f"{m.pid}: {m.fields}" for m in notify.messages[-15:])
        raise AssertionError(f"{exc}\nlast messages:\n{received}\ndaemon log:\n{daemon_log(config)[-3000:]}") from None


def test_ready_status_watchdog_reload_and_stopping(notify: NotifySocket, tmp_path: Path, speech_wav: Path,
                                                   small_mp4: Path) -> None:
    # The job takes over 5 s, so the STATUS= line (refreshed every 2 s) shows it running.
    config = write_config(tmp_path, pipeline={"command": {"argv": slow_mux_argv(5), "timeout_seconds": 120}})
    proc = start_daemon(config, notify, WATCHDOG_USEC)
    main = proc.pid
    try:
        expect(lambda: notify.from_pid(main, "READY") or proc.poll() is not None, 60, "READY=1", notify, config)
        assert proc.poll() is None, daemon_log(config)
        ready = notify.from_pid(main, "READY")[0]

        # READY=1 only once a worker has reported in and can take work.
        idle = [w for w in ready.workers if w.get("state") in ("idle", "busy") and w.get("pid")]
        assert idle, f"READY=1 arrived before any worker was ready: {ready.workers}"
        assert all(os.path.exists(f"/proc/{w['pid']}") for w in idle)
        assert "STATUS" in ready.fields and "queued" in ready.fields["STATUS"]

        # It does take work, and says so in STATUS= while it renders.
        drop_pair(tmp_path / "inbox" / "alice", "hello", speech_wav, small_mp4)
        expect(lambda: any("1 running" in m.fields["STATUS"] for m in notify.from_pid(main, "STATUS")), 60,
               "a STATUS= line with the running job", notify, config)
        expect(lambda: outputs(tmp_path), 90, "the output", notify, config)
        expect(lambda: "0 running" in notify.from_pid(main, "STATUS")[-1].fields["STATUS"], 30,
               "a STATUS= line after the job", notify, config)
        running = [m.fields["STATUS"] for m in notify.from_pid(main, "STATUS") if "1 running" in m.fields["STATUS"]]
        assert any("alice/hello" in text for text in running), running

        # Reload: RELOADING=1, then READY=1 again.
        readies = len(notify.from_pid(main, "READY"))
        proc.send_signal(signal.SIGHUP)
        expect(lambda: len(notify.from_pid(main, "READY")) > readies, 30, "READY=1 after the reload", notify, config)
        assert notify.from_pid(main, "RELOADING"), "no RELOADING=1 on SIGHUP"
        assert notify.from_pid(main, "RELOADING")[-1].at < notify.from_pid(main, "READY")[-1].at
        time.sleep(1.5)  # a little idle time, for the watchdog
        stopped_at = time.monotonic()
    finally:
        code = terminate(proc)
    assert code == 0, daemon_log(config)

    stopping = notify.from_pid(main, "STOPPING")
    assert stopping and stopping[0].at >= stopped_at, "no STOPPING=1 after SIGTERM"
    # WATCHDOG=1 pings from READY to the stop, never further apart than WATCHDOG_USEC, busy or idle.
    pings = [m.at for m in notify.from_pid(main, "WATCHDOG")]
    assert len(pings) >= 3, pings
    window = [ready.at, *[t for t in pings if ready.at <= t <= stopped_at], stopped_at]
    gaps = [b - a for a, b in zip(window, window[1:], strict=False)]
    print(f"{len(pings)} WATCHDOG=1 pings, largest gap {max(gaps):.2f} s (limit {WATCHDOG_USEC / 1e6:g} s)")
    assert max(gaps) < WATCHDOG_USEC / 1e6, gaps
    # Only the main process talks to systemd (NotifyAccess=main ignores the rest).
    others = [m.fields for m in notify.messages if m.pid != main]
    assert not any({"READY", "STOPPING", "WATCHDOG"} & set(f) for f in others), others


def test_no_watchdog_pings_unless_asked(notify: NotifySocket, tmp_path: Path) -> None:
    config = write_config(tmp_path)
    proc = start_daemon(config, notify, watchdog_usec=None)
    try:
        expect(lambda: notify.from_pid(proc.pid, "READY") or proc.poll() is not None, 60, "READY=1", notify, config)
        assert proc.poll() is None, daemon_log(config)
        time.sleep(1.5)
    finally:
        code = terminate(proc)
    assert code == 0
    assert notify.from_pid(proc.pid, "STOPPING")
    assert not notify.from_pid(proc.pid, "WATCHDOG")


def test_worker_alone_speaks_sd_notify_as_its_own_unit(notify: NotifySocket, tmp_path: Path, speech_wav: Path,
                                                       small_mp4: Path) -> None:
    """`lipsyncd worker` as lipsyncd-worker@.service runs it: READY=1 once it takes jobs, pings, STOPPING=1."""
    config = write_config(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
    env.update(NOTIFY_SOCKET=str(notify.path), WATCHDOG_USEC=str(WATCHDOG_USEC))
    log = open(tmp_path / "daemon.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(["sh", "-c", 'export WATCHDOG_PID=$$; exec "$@"', "sh", sys.executable, "-m",
                             "daemon.cli", "--config", str(config), "worker", "--device", "cpu"],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    try:
        expect(lambda: notify.from_pid(proc.pid, "READY") or proc.poll() is not None, 60, "the worker's READY=1",
               notify, config)
        assert proc.poll() is None, daemon_log(config)
        ready = notify.from_pid(proc.pid, "READY")[0]
        assert any(w.get("pid") == proc.pid and w.get("state") == "idle" for w in ready.workers), ready.workers
        time.sleep(2.5)
        stopped_at = time.monotonic()
    finally:
        code = terminate(proc)
    assert code == 0, daemon_log(config)
    assert notify.from_pid(proc.pid, "STOPPING")
    pings = [m.at for m in notify.from_pid(proc.pid, "WATCHDOG") if ready.at <= m.at <= stopped_at]
    window = [ready.at, *pings, stopped_at]
    assert pings and max(b - a for a, b in zip(window, window[1:], strict=False)) < WATCHDOG_USEC / 1e6, window


@pytest.mark.parametrize("via", ["systemd-python", "own socket"])
def test_notifier_uses_systemd_python_when_installed_else_its_own_socket(via: str, notify: NotifySocket,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemons above use systemd-python where it is installed (install.sh installs the extra); the plain
    datagram is the fallback for `pip install lipsyncd` without it. Both reach the same bound socket."""
    from types import SimpleNamespace

    from daemon import sdnotify

    sent: list[str] = []
    if via == "systemd-python":
        real = pytest.importorskip("systemd.daemon")
        assert sdnotify.systemd_daemon is real, "systemd-python is installed but not used"
        monkeypatch.setattr(sdnotify, "systemd_daemon",
                            SimpleNamespace(notify=lambda message: sent.append(message) or real.notify(message)))
    else:
        monkeypatch.setattr(sdnotify, "systemd_daemon", None)
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify.path))
    notifier = sdnotify.Notifier()
    assert notifier.ready("up") and notifier.status("busy") and notifier.stopping()
    wait_for(lambda: len(notify.from_pid(os.getpid())) >= 3, 10, "three messages")
    assert [m.fields for m in notify.from_pid(os.getpid())] == [{"READY": "1", "STATUS": "up"}, {"STATUS": "busy"},
                                                                {"STOPPING": "1"}]
    assert sent == (["READY=1\nSTATUS=up", "STATUS=busy", "STOPPING=1"] if via == "systemd-python" else [])
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not sdnotify.Notifier().ready(), "without $NOTIFY_SOCKET nothing is sent"
