"""The job queue: Huey carries job ids from the watcher to the workers.

SqliteHuey in paths.state on one machine; PriorityRedisHuey when queue.url is redis://, so GPU hosts
can share one inbox. Huey delivers at most once; the spool and the lease reaper make it at least once.

Fairness comes from priorities: a job is enqueued with priority -(jobs its user already has in
flight), so one user's 200 drops line up behind a lone drop of another user instead of in front of it.
Ties run in arrival order.

Redis may be down or unreachable: every call then raises QueueUnavailable quickly (connect and read
timeouts below), and the daemon's queue (non-blocking) does not try again for FAIL_FAST_SECONDS, so a
burst of claims cannot stall its main loop past the systemd watchdog. The first failure and the
recovery are logged once each.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from daemon.config import Config

log = logging.getLogger("lipsyncd.queue")

QUEUE_NAME = "lipsyncd"
DB_NAME = "queue.db"
REQUEUE_PRIORITY = 1_000  # a job whose worker died goes back to the front
REDIS_CONNECT_TIMEOUT = 3.0  # seconds; a powered-off Redis host must not hang a caller
REDIS_READ_TIMEOUT = 3.0  # seconds beyond a blocking read's own wait
FAIL_FAST_SECONDS = 5.0  # after a failure, the daemon's queue answers "unavailable" at once for this long

T = TypeVar("T")


class QueueUnavailable(Exception):
    """The queue backend (Redis) cannot be reached; the caller retries later."""


class JobQueue:
    def __init__(self, config: Config, *, blocking_seconds: float = 0.0) -> None:
        url = config.queue.url
        if url:
            from huey import PriorityRedisHuey
            from redis import ConnectionPool

            # Explicit timeouts (older redis-py waits forever by default); keepalive notices a dead peer.
            pool = ConnectionPool.from_url(url, socket_connect_timeout=REDIS_CONNECT_TIMEOUT,
                                           socket_timeout=blocking_seconds + REDIS_READ_TIMEOUT,
                                           socket_keepalive=True)
            kwargs: dict[str, Any] = {"connection_pool": pool, "results": False, "utc": True}
            if blocking_seconds:
                kwargs.update(blocking=True, read_timeout=blocking_seconds)
            else:
                kwargs["blocking"] = False
            self.huey = PriorityRedisHuey(QUEUE_NAME, **kwargs)
            self.where = redact(url)
            self._fail_fast = 0.0 if blocking_seconds else FAIL_FAST_SECONDS
        else:
            from huey import SqliteHuey

            path = config.paths.state / DB_NAME
            path.parent.mkdir(parents=True, exist_ok=True)
            self.huey = SqliteHuey(QUEUE_NAME, filename=str(path), results=False, utc=True, timeout=30,
                                   storage_class=_normal_sync_storage())
            self.where = str(path)
            self._fail_fast = 0.0
        self.redis = bool(url)
        self.down_since: float | None = None  # wall-clock time of the first failure of an outage
        self._down_reason = ""
        self._retry_at = 0.0  # monotonic; before it, calls fail at once (daemon's Redis queue only)

        @self.huey.task(name="run_job")
        def run_job(job_id: str) -> None:  # a message only: workers run jobs themselves (daemon.jobs.worker)
            raise RuntimeError("run_job is executed by lipsyncd workers, not by huey_consumer")

        self._task = run_job

    def put(self, job_id: str, priority: int = 0) -> None:
        self._call(f"cannot put job {job_id} on the queue",
                   lambda: self.huey.enqueue(self._task.s(job_id, priority=priority)))

    def take(self) -> str | None:
        """The next job id, or None when the queue is empty (after up to blocking_seconds on Redis)."""
        task = self._call("cannot read the queue", self.huey.dequeue)
        if task is None:
            return None
        return str(task.args[0])

    def pending(self) -> list[str]:
        """Job ids waiting on the queue, in the order they will run."""
        return self._call("cannot read the queue", lambda: [str(task.args[0]) for task in self.huey.pending()])

    def depth(self) -> int:
        return self._call("cannot read the queue", lambda: int(self.huey.pending_count()))

    def _call(self, what: str, action: Callable[[], T]) -> T:
        """Run one queue operation; any backend error becomes QueueUnavailable with *what* in front."""
        if self._retry_at and time.monotonic() < self._retry_at:
            down_for = time.time() - (self.down_since or time.time())
            raise QueueUnavailable(f"{what} ({self.where}): unreachable for {down_for:.0f} s ({self._down_reason})")
        try:
            result = action()
        except Exception as exc:  # noqa: BLE001 - sqlite3/redis errors differ; all mean "not done"
            self._failed(exc)
            raise QueueUnavailable(f"{what} ({self.where}): {exc}") from exc
        if self.down_since is not None:
            log.info("the queue at %s is reachable again after %.0f s; jobs claimed meanwhile are queued by the "
                     "daemon's next reaper pass", self.where, time.time() - self.down_since)
            self.down_since, self._retry_at = None, 0.0
        return result

    def _failed(self, exc: Exception) -> None:
        if not self.redis:
            return
        self._down_reason = str(exc) or type(exc).__name__
        if self._fail_fast:
            self._retry_at = time.monotonic() + self._fail_fast
        if self.down_since is None:
            self.down_since = time.time()
            log.warning("the queue at %s cannot be reached (%s); new jobs wait in the spool and are queued when "
                        "it is back, workers retry with backoff", self.where, self._down_reason)

    def close(self) -> None:
        storage = self.huey.storage
        close = getattr(storage, "close", None)
        if callable(close):
            close()


def _normal_sync_storage() -> type:
    """huey's SQLite storage with synchronous=NORMAL: in WAL mode a commit then needs no fsync (4 ms or more on
    many disks, twice a job), and a power cut leaves the database consistent, losing at most its last commits.
    Neither loss matters: a job put and lost is put back by the reaper (a job in the spool, not on the queue),
    a job taken and handed out again finds its lease held or its folder gone, and is skipped."""
    from huey.storage import SqliteStorage

    class NormalSyncStorage(SqliteStorage):
        def _create_connection(self) -> Any:
            conn = super()._create_connection()
            conn.execute("pragma synchronous=1")
            return conn

    return NormalSyncStorage


def redact(url: str) -> str:
    """*url* without its password, for logs and status."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))
