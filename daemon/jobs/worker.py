"""A worker: one process per device that takes job ids off the queue and runs them through an engine.

Only workers import the pipeline (and so torch). A job goes verify -> render -> record -> publish -> finish
under a lease (spool/<id>/lease) that a heartbeat thread touches with the current stage and progress; a worker
that dies leaves a stale lease and the daemon's reaper puts the job back on the queue.

Signal handlers only set flags: work done inside a handler would interrupt whatever the main thread
was doing at that moment (huey's consumer says why). SIGTERM/SIGINT: take no new job, let the running
one finish within queue.stop_timeout_seconds; past that deadline the heartbeat thread puts it back on
the queue and ends the process (see Worker._abandon). SIGHUP: reload the configuration between jobs.

Publishing comes first: the video and a complete record are in outputs/ as soon as the engine is done. The
sync score and the poster are made after that, from the published video, and the record is replaced in one
rename (finish). What goes wrong there never fails the job: its video is out.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon import config as configmod
from daemon import log as logmod
from daemon import names
from daemon.access import Access
from daemon.jobs import filing, lease, record
from daemon.jobs.job import Job, JobState, load, save, write_json_atomic
from daemon.jobs.queue import REQUEUE_PRIORITY, JobQueue, QueueUnavailable
from daemon.jobs.spool import (
    POSTER_FILE,
    RECORD_FILE,
    RENDERED_DIR,
    WAITING_FILE,
    Sweeper,
    read_waiting,
    retire_job_folder,
)
from daemon.log import fields
from daemon.sdnotify import Notifier

if TYPE_CHECKING:
    from pipeline.engines import RenderResult

log = logging.getLogger("lipsyncd.worker")

IDLE_POLL_MIN, IDLE_POLL_MAX = 0.02, 0.1  # seconds between empty-queue polls: a drop waits half the last on average
QUEUE_RETRY_MAX = 30.0
HEARTBEAT_MAX_SECONDS = 2.0
MIN_FREE_BYTES = 16 * 1024 * 1024  # below this on spool/ or outputs/, jobs wait instead of failing
DISK_FULL_WAIT_MAX = 30.0
HEARTBEAT_JOIN_SECONDS = 5.0  # at exit, how long to wait for the heartbeat thread's last write
# Publish errors that are the output's name, not the server: the job fails (a rename fixes it), it does not wait.
NAME_ERRNOS = (errno.ENAMETOOLONG, errno.EILSEQ)


class NoRoom(Exception):
    """The server's disk is full: the job waits, back on the queue, without counting an attempt."""


@dataclass
class Run:
    """One attempt at a job in this worker: what its stages share."""

    job: Job
    folder: Path
    engine: str
    attempts: int  # job.attempts when taken: a re-queue restores it (a stop or a full disk is not the job's fault)
    started: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    lost_lease: bool = False  # set by the heartbeat thread when another worker took the lease over

    @property
    def audio(self) -> Path:
        return self.folder / self.job.audio.file

    @property
    def video(self) -> Path:
        return self.folder / self.job.video.file if self.job.video.consumed else Path(self.job.video.file)


class Worker:
    """One device's worker process: the main thread runs jobs, the heartbeat thread reports and keeps time."""

    def __init__(self, config: configmod.Config, device: str, config_path: str | os.PathLike[str] | None) -> None:
        self.config = config
        self.config_path = config_path
        self.configured_device = device
        self.device = device
        self.spool = config.paths.spool
        self.host = socket.gethostname()
        self.name = f"{self.host}-{device.replace(':', '')}-{os.getpid()}"
        self.stopping = False  # set by SIGTERM/SIGINT
        self.reload_requested = False  # set by SIGHUP
        self.current: Run | None = None
        self._stop_deadline: float | None = None  # monotonic; set by the heartbeat thread once a stop finds a job
        self.stage, self.progress = "idle", 0.0
        self._engines: dict[str, Any] = {}
        self._queue: JobQueue | None = None
        self._heartbeat_thread = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        self._stop_heartbeat = threading.Event()
        self._lease_lock = threading.Lock()  # the heartbeat never rewrites the lease of a folder being removed
        # Held while the job's files change (job.json, publishing, filing a failure, re-queueing): the stop
        # deadline re-queues a job only between such changes. Reentrant: _abandon holds it around _requeue.
        self._commit_lock = threading.RLock()
        self._notifier = Notifier()  # when run as lipsyncd-worker@.service; the daemon's workers have none
        self._sweeper: Sweeper | None = None  # removes finished job folders (started with the first)

    # --- process life ------------------------------------------------------------------------------

    def main(self) -> int:
        """Start up (device, default engine, queue, heartbeat thread), run jobs until stopped, sign off."""
        from pipeline.devices import resolve
        from pipeline.engines import EngineUnavailable

        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)
        try:
            self.device = resolve(self.configured_device)
            self._check_default_engine()  # a bad checkpoint is reported now, not mid-job
        except (ValueError, EngineUnavailable) as exc:
            log.error("worker for %s cannot start: %s", self.configured_device, exc)
            self._heartbeat(state="error", error=str(exc))
            return names.Exit.USAGE
        self._queue = JobQueue(self.config, blocking_seconds=1.0)
        self._heartbeat_thread.start()
        log.info("worker %s ready on %s (engine %s, queue %s)", self.name, self.device,
                 self.config.pipeline.engine, self._queue.where)
        self._heartbeat(state="idle")
        self._notifier.ready(f"worker on {self.device}: idle")
        try:
            self._loop()
        finally:
            self._stop_heartbeat.set()
            self._heartbeat_thread.join(HEARTBEAT_JOIN_SECONDS)
            if self._sweeper is not None:
                self._sweeper.close()
            self._sign_off()
            for engine in self._engines.values():
                with contextlib.suppress(Exception):
                    engine.close()
        return names.Exit.OK

    def _loop(self) -> None:
        """Take a job off the queue and run it, until stopped; back off while the queue is empty or down."""
        assert self._queue is not None
        idle, retry = IDLE_POLL_MIN, 1.0
        while not self.stopping:
            if self.reload_requested:
                self._reload()
            try:
                job_id = self._queue.take()
            except QueueUnavailable as exc:
                log.warning("%s; retrying in %.0f s", exc, retry)
                self._sleep(retry)
                retry = min(retry * 2, QUEUE_RETRY_MAX)
                continue
            retry = 1.0
            if job_id is None:
                self._sleep(idle)
                idle = min(idle * 2, IDLE_POLL_MAX)
                continue
            idle = IDLE_POLL_MIN
            self.run_job(job_id)

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            time.sleep(min(0.05, seconds))

    def _on_stop(self, signum: int, frame: object) -> None:
        self.stopping = True  # the loop takes no new job; the heartbeat thread watches the stop deadline

    def _on_hup(self, signum: int, frame: object) -> None:
        self.reload_requested = True

    def _reload(self) -> None:
        self.reload_requested = False
        try:
            new = configmod.load(self.config_path)
        except configmod.ConfigError as exc:
            log.error("configuration not reloaded, keeping the old one: %s", exc)
            return
        self.config = new
        self._engines.clear()
        logmod.setup(new.logging, service=True)
        log.info("configuration reloaded from %s", self.config_path)

    def _sign_off(self) -> None:
        """Tell systemd and `lipsyncd status` that this worker is gone."""
        self._notifier.stopping()
        lease.remove_heartbeat(self.spool, self.host, os.getpid())

    # --- heartbeats and the stop deadline ------------------------------------------------------------

    def _heartbeat_interval(self) -> float:
        return min(HEARTBEAT_MAX_SECONDS, self.config.queue.lease_seconds / 3)

    def _heartbeat_loop(self) -> None:
        """The heartbeat thread: beat every interval, and watch the stop deadline."""
        interval = self._heartbeat_interval()
        if self._notifier.watchdog_interval:
            interval = min(interval, self._notifier.watchdog_interval)
        wait = interval
        while not self._stop_heartbeat.wait(wait):
            run = self.current
            self._beat(run)
            wait = self._watch_stop(run, interval)

    def _beat(self, run: Run | None) -> None:
        """Ping systemd's watchdog, and rewrite the job's lease and the heartbeat file with stage and progress."""
        self._notifier.watchdog()
        if run is not None:
            self._notifier.status(f"job {run.job.id} ({run.job.user}/{run.job.stem}): "
                                  f"{self.stage} {100 * self.progress:.0f}%")
        with contextlib.suppress(OSError):
            with self._lease_lock:  # never rewrite the lease of a job folder being removed
                if run is not None and self.current is run and \
                        not lease.touch_lease(run.folder, self._payload(run.job.id, run.job.user)):
                    run.lost_lease = True
            self._heartbeat(state="busy" if run else ("stopping" if self.stopping else "idle"))

    def _watch_stop(self, run: Run | None, interval: float) -> float:
        """Once a stop finds a job running, give it queue.stop_timeout_seconds, then _abandon it.
        Returns how long the heartbeat thread waits before its next turn."""
        if not self.stopping or run is None:
            return interval
        if self._stop_deadline is None:
            timeout = self.config.queue.stop_timeout_seconds
            self._stop_deadline = time.monotonic() + timeout
            log.info("stopping: giving job %s up to %g s to finish", run.job.id, timeout,
                     extra=fields(job_id=run.job.id, user=run.job.user))
        left = self._stop_deadline - time.monotonic()
        if left <= 0:
            self._abandon()  # returns only when the job finished meanwhile
            return interval
        return min(interval, left)

    def _abandon(self) -> None:
        """Past the stop deadline (heartbeat thread): put the running job back on the queue and end the process.

        The main thread may be anywhere inside an engine, so it is not interrupted: the job is re-queued
        from here (lease dropped, state queued, the attempt not counted), the engine's child processes
        are killed, and the process ends with os._exit. Under the commit lock, so a job half published
        or half filed as failed is finished first (then there is nothing left to re-queue)."""
        with self._commit_lock:
            run = self.current
            if run is None:
                return  # it finished meanwhile: the main loop stops by itself
            self._requeue(run, "the worker was stopped before the job finished")
            _kill_children()
            self._sign_off()
            logging.shutdown()
            os._exit(names.Exit.OK)

    def _payload(self, job_id: str | None, user: str | None = None) -> dict[str, Any]:
        """What this worker is doing: the one payload its job's lease and its heartbeat file both carry."""
        return {"worker": self.name, "host": self.host, "pid": os.getpid(), "device": self.device,
                "job": job_id, "user": user, "stage": self.stage, "progress": round(self.progress, 4)}

    def _heartbeat(self, **state: Any) -> None:
        run = self.current
        payload = self._payload(run.job.id, run.job.user) if run else self._payload(None)
        with contextlib.suppress(OSError):
            lease.write_heartbeat(self.spool, self.name,
                                  {**payload, "interval": self._heartbeat_interval(), **state})

    def _progress(self, stage: str, fraction: float) -> None:
        """The engine's progress callback too: what the lease, the heartbeat and `lipsyncd status` show."""
        self.stage, self.progress = stage, max(0.0, min(1.0, fraction))

    @contextlib.contextmanager
    def _stage(self, run: Run, name: str, progress: float = 0.0) -> Iterator[None]:
        """The stage clock: show stage *name* at *progress*, and time it into the record's timings."""
        self._progress(name, progress)
        started = time.monotonic()
        yield
        run.timings[name] = time.monotonic() - started

    # --- one job -----------------------------------------------------------------------------------

    def engine(self, name: str) -> Any:
        from pipeline.engines import get_engine

        engine = self._engines.get(name)
        if engine is None:
            engine = get_engine(name, self.config.pipeline.settings)
            engine.check()
            self._engines[name] = engine
        return engine

    def _check_default_engine(self) -> None:
        """Fail start-up when the default engine cannot work; a remote one only gets a warning."""
        from pipeline.engines import EngineUnavailable, get_engine

        name = self.config.pipeline.engine
        try:
            self.engine(name)
        except EngineUnavailable as exc:
            if not get_engine(name, self.config.pipeline.settings).remote:
                raise
            log.warning("engine %s is not reachable now (%s); starting anyway, jobs fail until it is back",
                        name, exc)

    def run_job(self, job_id: str) -> None:
        """One job off the queue: take its lease, perform it, and wait for room when the disk is full."""
        folder = self.spool / job_id
        lease_seconds = self.config.queue.lease_seconds
        if not lease.take_lease(folder, self._payload(job_id), stale_after=lease_seconds):
            log.debug("job %s is done or held by another worker; skipping the duplicate", job_id)
            return
        try:
            job = load(folder)
        except (OSError, ValueError, TypeError, KeyError) as exc:
            log.error("job %s has an unreadable job.json (%s); moving it to failed/", job_id, exc,
                      extra=fields(job_id=job_id))
            self._fail_unreadable(folder, job_id, str(exc))
            return
        run = Run(job, folder, engine=job.engine or self.config.pipeline.engine, attempts=job.attempts)
        self.current = run
        self._progress("starting", 0.0)
        self._heartbeat(state="busy")  # status shows the job at once, not at the next heartbeat
        try:
            self._perform(run)
        except Exception as exc:
            why = self._no_room(exc)
            if why is None:
                raise
            new = self._note_waiting(run, why, stage="start")
            self._requeue(run, f"{why}; the job waits (it is not failed) until there is room",
                          level=logging.WARNING if new else logging.DEBUG)
            self._sleep(min(DISK_FULL_WAIT_MAX, 2 * lease_seconds))
        finally:
            self.current = None
            self._progress("idle", 0.0)
            log.debug("job %s left the worker", job.id, extra=fields(job_id=job.id, user=job.user))

    def _perform(self, run: Run) -> None:
        """verify -> render -> record -> publish. What stops verify or render fails the job in plain words,
        unless it is the server's disk (NoRoom, ENOSPC...): that goes up to run_job, and the job waits."""
        why = self._low_space()
        if why:
            raise NoRoom(why)  # before an attempt is counted
        if self._already_published(run):
            return
        waiting = read_waiting(run.folder)
        if waiting and waiting.get("stage") == "fail":  # failed earlier, and failed/ could not take the report
            self._fail(run, str(waiting.get("error") or "unknown error"), engine=waiting.get("engine"))
            return
        kept = self._rendered(run)  # rendered by an earlier attempt that could not publish: not rendered again
        if kept is None:
            if not self._begin_attempt(run):
                return
            self._waited(run)  # it had waited for room (a full disk) before it started
            try:
                inputs = self._verify(run)
                output, result = self._render(run)
            except Exception as exc:
                if self._no_room(exc):
                    raise
                if self.stopping:  # a stop signal reaches the engine's ffmpeg/ffprobe too: not the input's fault
                    self._requeue(run, f"the worker was stopped while the job ran ({type(exc).__name__})")
                    return
                self._fail(run, users_words(run, self._failure_reason(run, exc)), engine=run.engine)
                return
            kept = self._keep(run, output, self._record(run, inputs, output, result))
        final = self._publish(run, kept)
        if final is not None:
            self._finish(run, final, kept)

    def _begin_attempt(self, run: Run) -> bool:
        """Count the attempt (job.json: running); False when there is nothing to render: lipsyncd gave up
        on a job that keeps killing its workers, or an earlier attempt already published it."""
        job = run.job
        with self._commit_lock:
            job.attempts += 1
            job.state = JobState.RUNNING
            save(run.folder, job)
        if job.attempts > self.config.queue.max_attempts:
            self._fail(run, f"the worker processing this job stopped unexpectedly {job.attempts - 1} times "
                            "while lipsyncd kept running (crashed, or was killed by the system, e.g. for lack of "
                            "memory), so lipsyncd gave up on it. The input may make the engine crash; check the "
                            "log of this job.", engine=None)
            return False
        run.started = time.time()
        run.timings["queued"] = max(0.0, run.started - job.created)
        log.info("rendering %s with %s on %s (attempt %d)", job.stem, run.engine, self.device, job.attempts,
                 extra=fields(job_id=job.id, user=job.user, stage="render"))
        return True

    def _already_published(self, run: Run) -> bool:
        """True when an earlier attempt published the job before it was stopped: its sync score and poster
        are added if still pending (finish), and the job folder is removed."""
        job = run.job
        if not (job.published and Path(job.published).exists()):
            return False
        log.info("job %s was already published as %s; finishing", job.id, job.published,
                 extra=fields(job_id=job.id, user=job.user))
        run.started = run.started or time.time()
        self._finish(run, Path(job.published), run.folder / RENDERED_DIR)
        return True

    def _rendered(self, run: Run) -> Path | None:
        """The folder of a render that an earlier attempt finished but could not publish (a server fault), or
        None. Publishing it counts no attempt: the engine's work is done."""
        kept = run.folder / RENDERED_DIR
        try:
            started = json.loads((kept / RECORD_FILE).read_text(encoding="utf-8")).get("started")
        except (OSError, ValueError, AttributeError):
            return None
        run.started = float(started or time.time())
        log.debug("publishing %s, rendered by an earlier attempt (not rendered again)", run.job.stem,
                 extra=fields(job_id=run.job.id, user=run.job.user, stage="publish"))
        return kept

    def _keep(self, run: Run, output: Path, job_record: dict[str, Any]) -> Path:
        """Keep the finished render in the job folder (spool/<id>/rendered/, its record written last), so that a
        publish that has to wait for the server publishes it later instead of rendering it again."""
        work = output.parent
        (work / POSTER_FILE).unlink(missing_ok=True)  # an engine's file of that name is no poster of ours
        write_json_atomic(work / RECORD_FILE, job_record, durable=False)  # lost to a power cut: rendered again
        kept = run.folder / RENDERED_DIR
        shutil.rmtree(kept, ignore_errors=True)
        os.rename(work, kept)
        return kept

    def _verify(self, run: Run) -> dict[str, dict[str, Any]]:
        """Fingerprint the inputs (name, size, sha256) for the record; a vanished input ends the job here, and
        so does one longer or larger than pipeline.max_seconds / max_pixels (from the probe, before any engine
        decodes it: the audio is held in memory whole)."""
        from pipeline.media.probe import Limits

        with self._stage(run, "verify"):
            inputs = {"audio": record.fingerprint(run.job.audio.name, run.audio),
                      "video": record.fingerprint(run.job.video.name, run.video)}
            Limits.from_settings(self.config.pipeline.settings).check_inputs(run.audio, run.video)
            return inputs

    def _render(self, run: Run) -> tuple[Path, RenderResult]:
        """The engine writes the video into this attempt's own work folder (a dead worker's engine writes elsewhere)."""
        from pipeline.engines import JobSpec

        engine = self.engine(run.engine)
        work = run.folder / names.WORK_DIR / self.name
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        output = work / "output.mp4"
        spec = JobSpec(audio=run.audio, video=run.video, output=output, device=self.device, workdir=work,
                       options=engine.check_options(run.job.options))  # a bad option: the drop's plain error
        with self._stage(run, "engine"):
            result = engine.render(spec, self._progress)
        return output, result

    def _record(self, run: Run, inputs: dict[str, dict[str, Any]], output: Path,
                result: RenderResult) -> dict[str, Any]:
        """The record to publish beside the output (its sync score and poster pending: see _finish)."""
        run.timings.update({f"engine.{k}": v for k, v in result.timings.items()})
        return record.build(run.job, inputs=inputs, engine=run.engine, device=self.device, worker=self.name,
                            result=result, started=run.started, timings=run.timings, output=output)

    def _publish(self, run: Run, kept: Path) -> Path | None:
        """The render kept in *kept* into outputs/ under a free name with its record, unless the lease was lost
        (then the other worker's result counts). A server fault (read-only, permission, missing folder, full
        disk) makes the job wait for the next try (_wait_to_publish), the render kept. Returns the published
        video, or None when it was not published."""
        job, folder = run.job, run.folder
        outputs = self.config.paths.outputs
        self._progress("publish", 1.0)
        job_record = json.loads((kept / RECORD_FILE).read_text(encoding="utf-8"))
        sidecars: dict[str, Path | dict[str, Any]] = {}
        if not job_record.get("pending"):  # rendered by an older lipsyncd that made the poster before publishing
            sidecars[".jpg"] = kept / POSTER_FILE
        sidecars[".json"] = job_record  # last: a record means the video is complete
        with self._commit_lock:
            if job.publish_dir is None:
                job.publish_dir = str(outputs / filing.today() / names.printable(job.user))
                save(folder, job)
            if run.lost_lease or not lease.owns_lease(folder, self.name):
                log.error("lost the lease of job %s to another worker while it ran here (this worker was stalled "
                          "longer than queue.lease_seconds); not publishing, the other worker's result counts",
                          job.id, extra=fields(job_id=job.id, user=job.user, stage="publish"))
                return None
            try:
                final = filing.publish(outputs, job, kept / "output.mp4", sidecars=sidecars,
                                       publish_dir=Path(job.publish_dir), access=Access.of(self.config))
            except OSError as exc:
                if exc.errno in NAME_ERRNOS:
                    self._fail(run, f"the video was made but cannot be saved under the name {job.stem!r} in "
                                    f"outputs/ ({exc.strerror}). Give the files a shorter, plain name and drop "
                                    "them again.", engine=run.engine)
                else:
                    self._wait_to_publish(run, exc)
                return None
            self._waited(run)
            job.published = str(final)
            save(folder, job)
            log.info("published %s -> %s in %.1f s", job.stem, final, time.time() - run.started,
                     extra=fields(job_id=job.id, user=job.user, stage="publish"))
        _notify(self.config, "job_done", job.user, job.stem, job.id, str(final))
        return final

    def _finish(self, run: Run, final: Path, kept: Path) -> None:
        """Add the sync score and the poster to a published job, then remove its folder.

        Both are made from the published video; the poster goes in place first, then the record is replaced
        in one rename. Neither can fail the job: a missing score is recorded as {"error": why}, a missing
        poster is skipped. A server fault while putting them in place makes the job wait like a publish
        (the reaper hands it back, and it is finished then, not rendered again)."""
        job = run.job
        try:
            published = json.loads(final.with_suffix(".json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            published = None  # the person removed it meanwhile: nothing to add to
        if isinstance(published, dict) and published.get("pending"):
            self._progress("score", 1.0)
            timings: dict[str, float] = {}
            started = time.monotonic()
            score = record.sync_score(final)
            timings["score"] = time.monotonic() - started
            self._progress("poster", 1.0)
            started, poster = time.monotonic(), kept / POSTER_FILE
            kept.mkdir(exist_ok=True)
            frames, fps = published.get("frames") or 0, published.get("fps") or 0.0
            has_poster = record.poster(final, poster, frames / fps if fps else 0.0)
            timings["poster"] = time.monotonic() - started
            done = record.completed(published, score, timings)
            with self._commit_lock:
                if run.lost_lease or not lease.owns_lease(run.folder, self.name):
                    return  # the worker that took it over finishes it
                if not final.exists():
                    log.info("job %s: %s was removed before its sync score was added", job.id, final.name,
                             extra=fields(job_id=job.id, user=job.user, stage="finish"))
                else:
                    try:
                        owner = {"access": Access.of(self.config), "outputs_root": self.config.paths.outputs,
                                 "user": job.user}
                        if has_poster:
                            filing.publish_sidecar(final, ".jpg", poster, job.id, **owner)
                        filing.publish_sidecar(final, ".json", done, job.id, **owner)
                    except OSError as exc:
                        self._wait_to_publish(run, exc, what="is published, but its poster and sync score cannot "
                                                             "be added", stage="finish")
                        return
                    self._waited(run)
            sync = f"{score['correlation']:.2f}" if score and "correlation" in score else "n/a"
            log.info("done %s -> %s in %.1f s (sync score %s)", job.stem, final, time.time() - run.started, sync,
                     extra=fields(job_id=job.id, user=job.user, stage="done"))
        with self._commit_lock:
            self._remove_job_folder(run.folder)

    def _wait_to_publish(self, run: Run, exc: OSError, what: str = "is rendered but cannot be published",
                         stage: str = "publish") -> None:
        """The server cannot take the output now: the job waits, its render kept, and the daemon's reaper puts
        it back on the queue every little while (it is not failed, no attempt is counted, nothing is rendered
        again). Logged once per fault; `lipsyncd status` shows the reason from WAITING_FILE."""
        job, folder = run.job, run.folder
        why = server_fault(exc)
        with self._commit_lock:
            new = self._note_waiting(run, why, stage=stage)
            job.state = JobState.QUEUED
            job.attempts = run.attempts
            with contextlib.suppress(OSError):
                save(folder, job)
            self._release()
            lease.drop_lease(folder)
        log.log(logging.WARNING if new else logging.DEBUG, "job %s (%s) %s: %s. It waits and is published once "
                "this is fixed (it is not rendered again, and not failed)", job.id, job.stem, what, why,
                extra=fields(job_id=job.id, user=job.user, stage="publish"))

    def _note_waiting(self, run: Run, why: str, *, stage: str, **extra: Any) -> bool:
        """Record in WAITING_FILE why the job waits (for `lipsyncd status`, best effort: the disk may be full);
        True when this fault is new for the job, which is then logged as a warning, and only then."""
        before = read_waiting(run.folder)
        since = float(before.get("since") or time.time()) if before else time.time()
        with contextlib.suppress(OSError):
            write_json_atomic(run.folder / WAITING_FILE, {"reason": why, "since": since, "stage": stage, **extra})
        return before is None or _fault_key(str(before.get("reason"))) != _fault_key(why)

    def _waited(self, run: Run) -> None:
        """The job goes on after waiting for the server: say once that the fault is fixed, forget it."""
        waited = read_waiting(run.folder)
        if waited is None:
            return
        log.info("job %s goes on: what kept it waiting for %.0f s is fixed (%s)", run.job.id,
                 time.time() - float(waited.get("since") or time.time()), waited.get("reason"),
                 extra=fields(job_id=run.job.id, user=run.job.user, stage=self.stage))
        with contextlib.suppress(OSError):
            (run.folder / WAITING_FILE).unlink()

    def _failure_reason(self, run: Run, exc: Exception) -> str:
        """What error.txt tells the person when verify or render stopped with *exc*."""
        from pipeline.engines import EngineError

        if isinstance(exc, EngineError):
            return str(exc)
        if isinstance(exc, FileNotFoundError):
            return f"an input file disappeared while the job was queued ({exc.filename}). Drop the pair again."
        log.error("internal error in job %s", run.job.id, exc_info=exc,
                  extra=fields(job_id=run.job.id, user=run.job.user, stage=self.stage))
        return (f"lipsyncd hit an internal error while rendering ({type(exc).__name__}: {exc}). This is a bug, "
                "not a problem with your files; the log has the details. Report it with the job id, then retry "
                "the job.")

    def _release(self) -> None:
        """The job is no longer this worker's: the heartbeat stops touching its lease (before it goes)."""
        with self._lease_lock:
            self.current = None

    def _remove_job_folder(self, folder: Path) -> None:
        """Remove a finished or failed job's folder, lease and all: renamed away at once, unlinked by the
        sweeper thread while the next job starts."""
        self._release()
        gone = retire_job_folder(folder)
        if gone is not None:
            if self._sweeper is None:
                self._sweeper = Sweeper(self.spool)
            self._sweeper.put(gone)

    def _fail(self, run: Run, reason: str, *, engine: str | None) -> None:
        """File the job's inputs and error.txt under failed/ and tell its user."""
        job, folder = run.job, run.folder
        verdict = reason  # kept, should failed/ not take the report now
        files = [(folder / f.file, f.name) for f in job.inputs() if f.consumed and (folder / f.file).exists()]
        if not job.video.consumed:
            reason += f"\n\n(The avatar video {job.video.file} was used and is unchanged.)"
        with self._commit_lock:
            try:
                where = filing.file_failure(self.config.paths.failed, job.user, job.stem, files,
                                            reason, job=job, engine=engine, device=self.device,
                                            access=Access.of(self.config))
            except OSError as exc:
                self._wait_to_file(run, verdict, engine, exc)
                return
            self._waited(run)
            log.error("failed %s: %s (inputs and error.txt in %s)", job.stem, reason.splitlines()[0], where,
                      extra=fields(job_id=job.id, user=job.user, stage="failed"))
            self._remove_job_folder(folder)
        _notify(self.config, "job_failed", job.user, job.stem, job.id, reason)

    def _wait_to_file(self, run: Run, reason: str, engine: str | None, exc: OSError) -> None:
        """failed/ cannot take the report now (a server fault): the job waits in the spool with its verdict, and
        is filed when the reaper next hands it to a worker, without rendering it again."""
        job = run.job
        why = server_fault(exc)
        new = self._note_waiting(run, why, stage="fail", error=reason, engine=engine)
        job.state = JobState.QUEUED  # the verdict is kept: nothing runs, and no attempt is given back
        with contextlib.suppress(OSError):
            save(run.folder, job)
        self._release()
        lease.drop_lease(run.folder)
        log.log(logging.WARNING if new else logging.DEBUG, "job %s (%s) failed (%s) but cannot be filed under "
                "failed/: %s. It waits in the spool and is filed once this is fixed", job.id, job.stem,
                reason.splitlines()[0], why, extra=fields(job_id=job.id, user=job.user, stage="failed"))

    def _fail_unreadable(self, folder: Path, job_id: str, why: str) -> None:
        files = [(p, p.name) for p in folder.iterdir()
                 if p.is_file() and p.name not in (names.LEASE_FILE, names.JOB_FILE, names.TAKEOVER_LOCK)]
        filing.file_failure(self.config.paths.failed, "unknown", job_id, files,
                            f"the job's record (job.json) is damaged: {why}", access=Access.of(self.config))
        self._remove_job_folder(folder)

    def _no_room(self, exc: Exception) -> str | None:
        """Why *exc* is the server's full disk rather than the job's fault, or None.

        The one place that decides "the job waits and is re-queued without counting an attempt":
        NoRoom (checked before the job starts), ENOSPC/EDQUOT from anywhere, or any error while the
        spool's or the outputs' disk is nearly full (an engine's own error was most likely "No space
        left on device")."""
        if isinstance(exc, NoRoom):
            return str(exc)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return f"the disk is full ({exc})"
        return self._low_space()

    def _low_space(self) -> str | None:
        """Why there is no room to run a job (spool or outputs nearly full), or None."""
        for key in ("spool", "outputs"):
            folder = self.config.paths.folders()[key]
            try:
                free = shutil.disk_usage(folder).free
            except OSError:
                continue
            if free < MIN_FREE_BYTES:
                return (f"the disk holding paths.{key} ({folder}) is full: {free // (1024 * 1024)} MB free, "
                        f"at least {MIN_FREE_BYTES // (1024 * 1024)} MB needed")
        return None

    def _requeue(self, run: Run, why: str, level: int = logging.WARNING) -> None:
        """Back on the queue, at the front, as if this attempt never started (a stop or a full disk is not the
        job's fault): job.json queued with the attempt count it had when taken, lease dropped."""
        job = run.job
        with self._commit_lock:
            job.state = JobState.QUEUED
            job.attempts = run.attempts
            with contextlib.suppress(OSError):
                save(run.folder, job)
            self._release()
            lease.drop_lease(run.folder)
            try:
                assert self._queue is not None
                self._queue.put(job.id, priority=REQUEUE_PRIORITY)
                log.log(level, "%s; job %s is back on the queue", why, job.id,
                            extra=fields(job_id=job.id, user=job.user))
            except QueueUnavailable as exc:
                log.warning("%s; %s (the daemon queues it again later)", why, exc,
                            extra=fields(job_id=job.id, user=job.user))


def _fault_key(reason: str) -> str:
    """A waiting reason without its numbers ("12 MB free"), to tell a new fault from the same one again."""
    return re.sub(r"\d+", "#", reason)


def server_fault(exc: OSError) -> str:
    """What keeps the server from publishing, in the operator's words (the folder, and what to fix)."""
    where = exc.filename or "outputs/"
    what = {errno.EROFS: "it is on a read-only filesystem (remount it read-write)",
            errno.EPERM: "writing there is not permitted (an immutable folder? see lsattr)",
            errno.EACCES: "permission denied (check its owner and mode)",
            errno.ENOENT: "the folder is missing (mount or create it)",
            errno.ENOTDIR: "the folder is missing (mount or create it)",
            errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up"}.get(exc.errno or 0)
    return f"{where}: {what or exc.strerror or exc}"


def _kill_children() -> None:
    """SIGKILL this process's children (ffmpeg pipes, an external command), and the process group of each
    child that leads one (the command engine runs its tool in a session of its own, helpers included)."""
    me = os.getpid()
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid, pgrp = (int(v) for v in stat_file.read_text().rsplit(")", 1)[1].split()[1:3])
        except (OSError, ValueError, IndexError):
            continue
        if ppid != me:
            continue
        pid = int(stat_file.parent.name)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if pgrp == pid:
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)


def users_words(run: Run, text: str) -> str:
    """*text* about the job's files as the person knows them: engines only see the spool's copies, so their
    messages say 'video.mp4' and ffmpeg's say file:/…/spool/<job>/video.mp4; each becomes the name that was
    dropped, and any other path inside the job's folder (its work files) just its own name."""
    folder = str(run.folder)
    names_of: dict[str, str] = {}
    for item in run.job.inputs():
        path = str(run.folder / item.file) if item.consumed else item.file
        names_of[path] = item.name
        if item.consumed:
            names_of[item.file] = item.name
    paths = "|".join(re.escape(p) for p in sorted(names_of, key=len, reverse=True) if p.startswith("/"))
    bare = "|".join(re.escape(p) for p in sorted(names_of, key=len, reverse=True) if not p.startswith("/"))
    pattern = re.compile("|".join(part for part in (
        f"(?:file:)?(?P<path>{paths})(?![^\\s'\",:;)])" if paths else "",
        f"(?:file:)?(?P<other>{re.escape(folder)}/[^\\s'\",:;)]*)",
        f"(?<![\\w./-])(?P<bare>{bare})(?![\\w-]|\\.\\w)" if bare else "",
    ) if part))

    def name(match: re.Match[str]) -> str:
        if match.group("other"):
            return Path(match.group("other")).name
        return names_of[match.group("path") or match.group("bare")]

    return pattern.sub(name, text)


def _notify(config: configmod.Config, event: str, user: str, stem: str, job_id: str, detail: str) -> None:
    """Job events go out through daemon.notify.send, which honours notify.events and never raises."""
    from daemon.notify.send import notify_job

    notify_job(config, event, user, stem, job_id, detail)


def main(config: configmod.Config, device: str | None, config_path: str | os.PathLike[str] | None) -> int:
    logmod.setup(config.logging, service=True)
    configmod.ensure_folders(config, ("spool", "state"))
    for key in ("outputs", "failed"):  # the daemon creates them; here a fault makes jobs wait, not the worker exit
        folder = config.paths.folders()[key]
        if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
            log.warning("paths.%s (%s) is missing or not writable; finished jobs wait until it is fixed",
                        key, folder)
    device = device or config.pipeline.devices[0]
    return Worker(config, device, config_path).main()
