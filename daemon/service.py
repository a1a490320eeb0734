"""`lipsyncd run`: the daemon systemd runs. Watches the inbox, claims pairs, supervises the workers.

The main thread owns everything but the observer: it sleeps until a watcher event, a settle deadline,
a rescan, a reaper pass or a signal, so an idle daemon uses no CPU. Workers are child processes (one
per device) so torch never loads here. READY=1 goes to systemd only when the watcher runs and every
worker has reported in.
"""

from __future__ import annotations

import logging
import os
import queue as queuemod
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from daemon import access, names
from daemon import config as configmod
from daemon import log as logmod
from daemon.inbox.claim import recover_claims
from daemon.inbox.ingest import Ingest
from daemon.inbox.watcher import LOST_CHECK_SECONDS, Watcher
from daemon.jobs import lease
from daemon.jobs.queue import JobQueue
from daemon.jobs.reaper import SpoolSummary, reap
from daemon.log import fields
from daemon.sdnotify import Notifier

log = logging.getLogger("lipsyncd")

READY_TIMEOUT_SECONDS = 300.0  # torch + CUDA initialisation on a cold GPU host can be slow
RESTART_BACKOFF_MAX = 60.0
STATUS_EVERY_SECONDS = 2.0


class WorkerProcess:
    """One supervised `lipsyncd worker --device D` child."""

    def __init__(self, device: str, config_path: str | None) -> None:
        self.device = device
        self.config_path = config_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.backoff = 1.0
        self.restart_at = 0.0
        self.failures = 0

    def start(self) -> None:
        argv = [sys.executable, "-m", "daemon.cli"]
        if self.config_path:
            argv += ["--config", str(self.config_path)]
        argv += ["worker", "--device", self.device]
        # The daemon alone speaks to systemd (NotifyAccess=main): workers do not inherit its notify socket.
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, env=env)
        self.started = time.monotonic()
        log.info("started worker for %s (pid %d)", self.device, self.proc.pid)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Service:
    def __init__(self, config: configmod.Config, config_path: str | None) -> None:
        self.config = config
        self.config_path = config_path
        self.notifier = Notifier()
        self.stop_requested = False
        self.reload_requested = False
        self.queue = JobQueue(config)
        self.ingest = Ingest(config, self.queue, on_failure=self._on_ingest_failure)
        self.watcher = Watcher(config.paths.inbox, poll=config.ingest.poll)
        local = config.queue.local_workers
        self.workers = [WorkerProcess(d, config_path) for d in config.pipeline.devices] if local else []
        self.summary = SpoolSummary()
        self.ready = False
        self.exit_code = 0

    # --- signals: handlers set a flag and wake the main loop (SimpleQueue.put is reentrant) ------------

    def _on_term(self, signum: int, frame: object) -> None:
        self.stop_requested = True
        self.watcher.changes.put_nowait(None)

    def _on_hup(self, signum: int, frame: object) -> None:
        self.reload_requested = True
        self.watcher.changes.put_nowait(None)

    # --- the loop ----------------------------------------------------------------------------------

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        signal.signal(signal.SIGHUP, self._on_hup)
        spool_dir = self.config.paths.spool
        for job_id in recover_claims(spool_dir):
            log.info("recovered interrupted claim %s", job_id, extra=fields(job_id=job_id))
        self.summary = reap(self.config, self.queue, grace_seconds=0)
        self.ingest.in_flight = dict(self.summary.per_user)
        for worker in self.workers:
            worker.start()
        self.watcher.start()
        self.ingest.scan()
        self.ingest.tick(all_folders=True)
        workers = (f"{len(self.workers)} worker(s): {', '.join(w.device for w in self.workers)}" if self.workers
                   else "no local workers (queue.local_workers: false)")
        log.info("watching %s (%s); %s; queue %s", self.config.paths.inbox, self.watcher.mode, workers,
                 self.queue.where)

        now = time.monotonic()
        self._next = {"rescan": now + self.config.ingest.rescan_seconds,
                      "reap": now + self._reap_interval(), "status": now, "watchdog": now,
                      "ready_deadline": now + READY_TIMEOUT_SECONDS}
        self._last_status = ""
        while not self.stop_requested:
            try:
                if not self._step():
                    self.exit_code = 2
                    break
            except Exception:  # noqa: BLE001 - a bad moment must not stop the service; say what happened
                log.exception("unexpected error in the main loop; carrying on")
                time.sleep(1.0)
        self._shutdown()
        return self.exit_code

    def _step(self) -> bool:
        """One turn of the main loop: wait for something to do, then do it. False: stop with exit 2."""
        nxt = self._next
        now = time.monotonic()
        wake = [nxt["rescan"], nxt["reap"]]
        if self.notifier.enabled:
            wake.append(nxt["status"])
        if self.notifier.watchdog_interval:
            wake.append(nxt["watchdog"])
        if not self.ready:
            wake.append(now + 0.2)  # workers are starting: look at their heartbeats soon
        if self.watcher.lost:
            wake.append(now + LOST_CHECK_SECONDS)  # the inbox was deleted: look for a new one soon
        deadline = self.ingest.next_deadline()
        if deadline is not None:
            wake.append(deadline + 0.01)
        self._drain(max(0.0, min(wake) - now))
        if self.stop_requested:
            return True
        if self.reload_requested:
            self._reload()
        if self.watcher.check():
            self.ingest.scan()  # what arrived in the new inbox before it was watched
        now = time.monotonic()
        all_folders = now >= nxt["rescan"]
        if all_folders:
            self.ingest.scan()
            nxt["rescan"] = now + self.config.ingest.rescan_seconds
            if not self.watcher.alive():
                log.error("the inbox watcher stopped; restarting it")
                self.watcher.stop()
                self.watcher.start()
        self.ingest.tick(all_folders=all_folders)
        if now >= nxt["reap"]:
            self.summary = reap(self.config, self.queue)
            self.ingest.in_flight = dict(self.summary.per_user)
            nxt["reap"] = now + self._reap_interval()
        if not self._supervise():
            return False
        if not self.ready and self._workers_ready():
            self.ready = True
            self.notifier.ready(self._status_text())
            log.info("ready: taking work")
        elif not self.ready and now > nxt["ready_deadline"]:
            log.error("workers did not report ready within %.0f s", READY_TIMEOUT_SECONDS)
            nxt["ready_deadline"] = float("inf")
        if self.notifier.watchdog_interval and now >= nxt["watchdog"]:
            if self.watcher.alive():
                self.notifier.watchdog()
            nxt["watchdog"] = now + self.notifier.watchdog_interval
        if now >= nxt["status"]:
            text = self._status_text()
            if text != self._last_status:
                self.notifier.status(text)
                self._last_status = text
            nxt["status"] = now + STATUS_EVERY_SECONDS
        return True

    def _drain(self, timeout: float) -> None:
        """Wait up to *timeout* for watcher events, then take all that are waiting."""
        try:
            change = self.watcher.changes.get(timeout=timeout)
        except queuemod.Empty:
            return
        while True:
            if change is not None:
                self.ingest.change(change)
            try:
                change = self.watcher.changes.get_nowait()
            except queuemod.Empty:
                return

    def _reap_interval(self) -> float:
        return max(1.0, min(5.0, self.config.queue.lease_seconds / 3))

    def _supervise(self) -> bool:
        """Restart workers that died; False when a worker cannot start at all (bad engine setup)."""
        now = time.monotonic()
        for worker in self.workers:
            if worker.alive() or self.stop_requested:
                continue
            if worker.proc is not None and worker.restart_at == 0.0:
                code = worker.proc.returncode
                if code == 2 and not self.ready:
                    log.error("the worker for %s could not start (see its message above); stopping", worker.device)
                    return False
                worker.failures += 1
                worker.restart_at = now + worker.backoff
                lease.remove_heartbeat(self.config.paths.spool, socket.gethostname(), worker.proc.pid)
                log.error("worker for %s exited with status %s; restarting in %.0f s (its job, if any, is "
                          "re-queued when its lease expires)", worker.device, code, worker.backoff)
                worker.backoff = min(worker.backoff * 2, RESTART_BACKOFF_MAX)
            elif now >= worker.restart_at:
                worker.restart_at = 0.0
                worker.start()
            if worker.alive() and now - worker.started > 60:
                worker.backoff = 1.0
        return True

    def _workers_ready(self) -> bool:
        beats = {(b.get("pid")): b for b in lease.heartbeats(self.config.paths.spool)}
        for worker in self.workers:
            if worker.proc is None:
                return False
            beat = beats.get(worker.proc.pid)
            if beat is None or beat.get("state") not in ("idle", "busy"):
                return False
        return True

    def _status_text(self) -> str:
        summary = self.summary
        parts = [f"{summary.queued} queued", f"{len(summary.running)} running"]
        for job in summary.running[:3]:
            parts.append(f"{names.escape(str(job.get('user')))}/{names.escape(str(job.get('stem')))} "
                         f"{job.get('stage', '?')} "
                         f"{100 * float(job.get('progress') or 0):.0f}%")
        parts.append(f"{self.ingest.claimed} claimed since start")
        return "; ".join(parts)

    def _reload(self) -> None:
        self.reload_requested = False
        self.notifier.reloading()
        try:
            new = configmod.load(self.config_path)
            configmod.check_layout(new)
            problems = configmod.ensure_folders(new)
            problems += access.start(new)
        except configmod.ConfigError as exc:
            log.error("configuration not reloaded, keeping the old one: %s", exc)
            self.notifier.ready(self._status_text())
            return
        for problem in problems:
            log.warning("%s: finished jobs will wait in the spool and be published once it is fixed", problem)
        if new.pipeline.devices != self.config.pipeline.devices or new.paths != self.config.paths \
                or new.queue.url != self.config.queue.url \
                or new.queue.local_workers != self.config.queue.local_workers:
            log.warning("pipeline.device, paths, queue.url and queue.local_workers changes take effect after a "
                        "restart (systemctl restart lipsyncd)")
        self.config = new
        logmod.setup(new.logging, service=True)
        self.ingest.apply_config(new)
        for worker in self.workers:
            if worker.alive():
                assert worker.proc is not None
                worker.proc.send_signal(signal.SIGHUP)
        log.info("configuration reloaded from %s", self.config_path)
        self.notifier.ready(self._status_text())

    def _shutdown(self) -> None:
        self.notifier.stopping("stopping: letting running jobs finish")
        log.info("stopping: no new jobs are taken; running jobs get %s s to finish",
                 self.config.queue.stop_timeout_seconds)
        self.watcher.stop()
        for worker in self.workers:
            if worker.alive():
                assert worker.proc is not None
                worker.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.config.queue.stop_timeout_seconds + 15
        for worker in self.workers:
            if worker.proc is None:
                continue
            try:
                worker.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker for %s did not stop in time; killing it (its job is re-queued at the next start)",
                          worker.device)
                worker.proc.kill()
                worker.proc.wait()
        self.queue.close()
        log.info("stopped")

    def _on_ingest_failure(self, user: str, stem: str, where: str, reason: str) -> None:
        from daemon.notify.send import notify_job

        notify_job(self.config, "job_failed", user, stem, Path(where).name, f"{reason}\n({where})")


def main(config: configmod.Config, config_path: str | os.PathLike[str] | None) -> int:
    logmod.setup(config.logging, service=True)
    configmod.check_layout(config)  # before any folder is made: a bad layout is exit 2, and nothing is created
    for problem in configmod.ensure_folders(config):
        log.warning("%s: finished jobs will wait in the spool and be published once it is fixed", problem)
    for problem in access.start(config):  # private mode on a filesystem without ACLs: exit 2, nothing opened
        log.warning("%s", problem)
    path = str(config_path) if config_path else None
    return Service(config, path).run()


if __name__ == "__main__":
    sys.exit(main(configmod.load(os.environ.get("LIPSYNCD_CONFIG")), os.environ.get("LIPSYNCD_CONFIG")))
