"""sd_notify(3): READY=1, STATUS=, WATCHDOG=1, RELOADING=1, STOPPING=1 to systemd; a no-op without systemd.

systemd-python's systemd.daemon.notify (the `systemd` extra, which install.sh and dev.sh install) sends
them when it is importable; a plain `pip install lipsyncd` lacks it, so the same datagram goes out over
a socket of our own instead.
"""

from __future__ import annotations

import os
import socket
from types import ModuleType

systemd_daemon: ModuleType | None
try:
    from systemd import daemon as systemd_daemon
except ImportError:  # systemd-python is not installed: send the datagram ourselves
    systemd_daemon = None


class Notifier:
    """Sends READY=1, STATUS=..., WATCHDOG=1 and STOPPING=1 to systemd when it is listening ($NOTIFY_SOCKET)."""

    def __init__(self) -> None:
        address = os.environ.get("NOTIFY_SOCKET", "")
        self.enabled = bool(address)
        self._address = "\0" + address[1:] if address.startswith("@") else address  # "@": Linux abstract socket
        self._sock: socket.socket | None = None
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        watchdog = usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid()))
        # Ping at half the interval systemd expects, as sd_watchdog_enabled(3) advises.
        self.watchdog_interval: float | None = int(usec) / 2e6 if watchdog else None

    def send(self, *lines: str) -> bool:
        """One message of KEY=VALUE lines; False when systemd is not listening or it could not be sent."""
        if not self.enabled:
            return False
        message = "\n".join(lines)
        try:
            if systemd_daemon is not None:
                return bool(systemd_daemon.notify(message))
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(message.encode(), self._address)
        except OSError:
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def reloading(self) -> bool:
        return self.send("RELOADING=1")

    def stopping(self, status: str = "") -> bool:
        return self.send("STOPPING=1", *([f"STATUS={status}"] if status else []))
