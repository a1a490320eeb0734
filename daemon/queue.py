"""The job queue: Huey carries job ids from the watcher to the workers.

SqliteHuey in paths.state on one machine; PriorityRedisHuey when queue.url is redis://, so GPU hosts
can share one inbox. Huey delivers at most once; the spool and the lease reaper make it at least once.

Fairness comes from priorities: a job is enqueued with priority -(jobs its user already has in
flight), so one user's 200 drops line up behind a lone drop of another user instead of in front of it.
Ties run in arrival order.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger("lipsyncd.queue")

QUEUE_NAME = "lipsyncd"
DB_NAME = "queue.db"
REQUEUE_PRIORITY = 1_000  # a job whose worker died goes back to the front


class QueueUnavailable(Exception):
    """The queue backend (Redis) cannot be reached; the caller retries later."""


class JobQueue:
    def __init__(self, config: Mapping[str, Any], *, blocking_seconds: float = 0.0) -> None:
        url = config["queue"]["url"]
        if url:
            from huey import PriorityRedisHuey

            kwargs: dict[str, Any] = {"url": url, "results": False, "utc": True}
            if blocking_seconds:
                kwargs.update(blocking=True, read_timeout=blocking_seconds)
            else:
                kwargs["blocking"] = False
            self.huey = PriorityRedisHuey(QUEUE_NAME, **kwargs)
            self.where = url
        else:
            from huey import SqliteHuey

            path = Path(config["paths"]["state"]) / DB_NAME
            path.parent.mkdir(parents=True, exist_ok=True)
            self.huey = SqliteHuey(QUEUE_NAME, filename=str(path), results=False, utc=True, timeout=30)
            self.where = str(path)

        @self.huey.task(name="run_job")
        def run_job(job_id: str) -> None:  # a message only: workers run jobs themselves (daemon.worker)
            raise RuntimeError("run_job is executed by lipsyncd workers, not by huey_consumer")

        self._task = run_job

    def put(self, job_id: str, priority: int = 0) -> None:
        try:
            self.huey.enqueue(self._task.s(job_id, priority=priority))
        except Exception as exc:  # noqa: BLE001 - sqlite3/redis errors differ; all mean "not queued"
            raise QueueUnavailable(f"cannot put job {job_id} on the queue ({self.where}): {exc}") from exc

    def take(self) -> str | None:
        """The next job id, or None when the queue is empty (after up to blocking_seconds on Redis)."""
        try:
            task = self.huey.dequeue()
        except Exception as exc:  # noqa: BLE001
            raise QueueUnavailable(f"cannot read the queue ({self.where}): {exc}") from exc
        if task is None:
            return None
        return str(task.args[0])

    def pending(self) -> list[str]:
        """Job ids waiting on the queue, in the order they will run."""
        try:
            return [str(task.args[0]) for task in self.huey.pending()]
        except Exception as exc:  # noqa: BLE001
            raise QueueUnavailable(f"cannot read the queue ({self.where}): {exc}") from exc

    def depth(self) -> int:
        try:
            return int(self.huey.pending_count())
        except Exception as exc:  # noqa: BLE001
            raise QueueUnavailable(f"cannot read the queue ({self.where}): {exc}") from exc

    def close(self) -> None:
        storage = self.huey.storage
        close = getattr(storage, "close", None)
        if callable(close):
            close()
