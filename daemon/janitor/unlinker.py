"""A helper process that deletes while the janitor goes on reading: the unlinks overlap the scan.

Why a process: a pass costs one stat per file in Python (reading) plus one unlink per expired file in the
kernel (deleting); in one process the two add up. A thread does not help: every syscall releases and
re-takes the GIL, and the hand-offs cost more than they save. A forked helper deletes on the other core.

Why it stays safe: the planner hands over each folder as its own open descriptor (SCM_RIGHTS over a
socketpair), the one it opened O_NOFOLLOW relative to its parent and checked to be on the root's
filesystem. The helper never resolves a path: it runs *work(fds, payload)* on those descriptors.

If the helper cannot be started (fork refused), the caller does the work itself; if it dies, finish()
says so and which hand-overs are unaccounted for.
"""

from __future__ import annotations

import os
import pickle
import socket
import struct
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

_HEAD = struct.Struct("!Q")  # length of the pickled payloads that follow
BATCH = 16  # hand-overs per message
MAX_FDS = 4  # descriptors per hand-over


class Unlinker:
    """Runs *work(fds, payload)* in a forked helper for each submit(); finish() returns the results, in order."""

    def __init__(self, work: Callable[[list[int], Any], Any]) -> None:
        self.work = work
        self.pid = 0
        self.sent = 0  # hand-overs the helper accepted
        self.lost = 0  # hand-overs accepted by submit() that could not be passed on (the helper was gone)
        self._fds: list[int] = []  # the batch not sent yet: all its descriptors, in order
        self._payloads: list[tuple[int, Any]] = []  # (how many of those descriptors, payload)
        self.failure = ""  # why the helper stopped early, in words; "" while it is fine
        self._exit_text = ""  # how the helper ended, when not cleanly
        self._sock: socket.socket | None = None

    @staticmethod
    def worthwhile() -> bool:
        """True when this process may run on two CPUs or more: on one, the helper only takes turns with the
        caller and the hand-overs cost more than they save."""
        try:
            return len(os.sched_getaffinity(0)) > 1
        except OSError:
            return (os.cpu_count() or 1) > 1

    def start(self) -> bool:
        """Fork the helper; False (and nothing started) when the system refuses a process or a socket."""
        try:
            parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        except OSError as exc:
            self.failure = f"no socket for the helper process: {exc.strerror or exc}"
            return False
        try:
            pid = os.fork()
        except OSError as exc:
            parent.close()
            child.close()
            self.failure = f"cannot start the helper process: {exc.strerror or exc}"
            return False
        if pid == 0:  # the helper
            parent.close()
            _serve(child, self.work)  # never returns
        child.close()
        self.pid, self._sock = pid, parent
        return True

    @property
    def running(self) -> bool:
        return self._sock is not None and not self.failure

    def submit(self, fds: Sequence[int], payload: Any) -> bool:
        """Hand *fds* (duplicated: the caller keeps and closes its own) and *payload* over.

        Hand-overs go out in batches of BATCH (one sendmsg each: a syscall per folder costs as much as
        the helper saves on a small one). False when the helper is gone: the caller does this one itself,
        and finish() reports the rest."""
        if not self.running:
            return False
        if not 0 < len(fds) <= MAX_FDS:
            raise ValueError(f"a hand-over carries 1 to {MAX_FDS} descriptors, not {len(fds)}")
        copies: list[int] = []
        try:
            for fd in fds:
                copies.append(os.dup(fd))
        except OSError as exc:
            for fd in copies:
                os.close(fd)
            self.failure = f"cannot pass a folder to the helper process: {exc.strerror or exc}"
            return False
        self._fds.extend(copies)
        self._payloads.append((len(copies), payload))
        if len(self._payloads) >= BATCH:
            self._flush()
        return True

    def _flush(self) -> None:
        fds, payloads = self._fds, self._payloads
        if not payloads:
            return
        self._fds, self._payloads = [], []
        body = pickle.dumps(payloads, pickle.HIGHEST_PROTOCOL)
        try:
            socket.send_fds(self._sock, [_HEAD.pack(len(body))], fds)
            self._sock.sendall(body)
            self.sent += len(payloads)
        except OSError as exc:
            self.failure = self._why_gone(exc)
            self.lost += len(payloads)
        finally:
            for fd in fds:
                os.close(fd)

    def finish(self) -> list[Any] | None:
        """Wait for the helper; the results of all accepted hand-overs in order, or None (see .failure)."""
        sock = self._sock
        if sock is None:
            return []
        results: list[Any] | None = None
        self._flush()
        try:
            sock.shutdown(socket.SHUT_WR)
            head = _recv_exact(sock, _HEAD.size)
            if head is not None:
                data = _recv_exact(sock, _HEAD.unpack(head)[0])
                if data is not None:
                    results = pickle.loads(data)
        except OSError as exc:
            self.failure = self.failure or self._why_gone(exc)
        finally:
            self.close()
        if results is None or len(results) != self.sent or self.lost:
            self.failure = self.failure or self._exit_text or "the helper process stopped without a report"
            return None
        return results

    def close(self) -> None:
        """Stop talking to the helper and reap it (it ends by itself on end-of-file)."""
        for fd in self._fds:
            os.close(fd)
        self._fds, self._payloads = [], []
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self.pid:
            _, status = os.waitpid(self.pid, 0)
            self.pid = 0
            if status:
                self._exit_text = _describe(status)

    @staticmethod
    def _why_gone(exc: OSError) -> str:
        return f"the helper process is gone ({exc.strerror or exc})"


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"the helper process was killed by signal {os.WTERMSIG(status)}"
    return f"the helper process failed (exit status {os.waitstatus_to_exitcode(status)})"


def _recv_exact(sock: socket.socket, size: int) -> bytes | None:
    """*size* bytes, or None at end-of-file before them."""
    chunks, left = [], size
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _serve(sock: socket.socket, work: Callable[[list[int], Any], Any]) -> None:
    """The helper's whole life: do each hand-over as it comes, send all results back at end-of-file, exit."""
    code = 1
    try:
        results = []
        while True:
            head, fds, _flags, _addr = socket.recv_fds(sock, _HEAD.size, BATCH * MAX_FDS)
            try:
                if not head:
                    break
                if len(head) < _HEAD.size:
                    head += _recv_exact(sock, _HEAD.size - len(head)) or b""
                body = _recv_exact(sock, _HEAD.unpack(head)[0]) if len(head) == _HEAD.size else None
                payloads = pickle.loads(body) if body is not None else []
                if not payloads or sum(count for count, _ in payloads) != len(fds):
                    raise RuntimeError("a hand-over arrived incomplete")
                start = 0
                for count, payload in payloads:
                    results.append(work(fds[start:start + count], payload))
                    start += count
            finally:
                for fd in fds:
                    os.close(fd)
        data = pickle.dumps(results, pickle.HIGHEST_PROTOCOL)
        sock.sendall(_HEAD.pack(len(data)) + data)
        code = 0
    except BaseException:  # noqa: BLE001 - the helper must never return into the caller's code
        try:
            traceback.print_exc(file=sys.stderr)
            sys.stderr.flush()
        except BaseException:  # noqa: BLE001, S110
            pass
    finally:
        os._exit(code)
