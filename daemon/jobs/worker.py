"""A worker: one process per device that takes job ids off the queue and runs them through an engine.

Only workers import the pipeline (and so torch). A job is run under a lease (spool/<id>/lease) that a
heartbeat thread touches with the current stage and progress; a worker that dies leaves a stale lease
and the daemon's reaper puts the job back on the queue. SIGTERM: finish the running job within
queue.stop_timeout_seconds or put it back; SIGHUP: reload the configuration between jobs.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from daemon import config as configmod
from daemon import log as logmod
from daemon import names
from daemon.jobs import filing, lease, spool
from daemon.jobs.job import Job, load, save
from daemon.jobs.queue import REQUEUE_PRIORITY, JobQueue, QueueUnavailable
from daemon.log import fields
from daemon.sdnotify import Notifier

log = logging.getLogger("lipsyncd.worker")

IDLE_POLL_MIN, IDLE_POLL_MAX = 0.02, 0.25  # seconds between empty-queue polls (backs off when idle)
QUEUE_RETRY_MAX = 30.0
HEARTBEAT_MAX_SECONDS = 2.0
MIN_FREE_BYTES = 16 * 1024 * 1024  # below this on spool/ or outputs/, jobs wait instead of failing
DISK_FULL_WAIT_MAX = 30.0


class DiskFull(Exception):
    """No room on the spool's or the outputs' filesystem: the job waits instead of failing."""


class Requeue(BaseException):
    """Raised in the main thread when a stop cannot wait for the running job any longer."""


class Worker:
    def __init__(self, config: configmod.Config, device: str, config_path: str | os.PathLike[str] | None) -> None:
        self.config = config
        self.config_path = config_path
        self.configured_device = device
        self.device = device
        self.spool = config.path("spool")
        self.name = f"{socket.gethostname()}-{device.replace(':', '')}-{os.getpid()}"
        self.stopping = False
        self.reload_requested = False
        self.current: tuple[Job, Path] | None = None
        self.stage, self.progress = "idle", 0.0
        self._engines: dict[str, Any] = {}
        self._queue: JobQueue | None = None
        self._stop_heartbeat = threading.Event()
        self._lease_lock = threading.Lock()
        self.lost_lease = False
        self._notifier = Notifier()  # when run as lipsyncd-worker@.service; the daemon's workers have none

    # --- process life ------------------------------------------------------------------------------

    def main(self) -> int:
        from pipeline.devices import resolve
        from pipeline.engines import EngineUnavailable

        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)
        signal.signal(signal.SIGALRM, self._on_alarm)
        try:
            self.device = resolve(self.configured_device)
            self._check_default_engine()  # a bad checkpoint is reported now, not mid-job
        except (ValueError, EngineUnavailable) as exc:
            log.error("worker for %s cannot start: %s", self.configured_device, exc)
            self._heartbeat(state="error", error=str(exc))
            return names.Exit.USAGE
        self._queue = JobQueue(self.config, blocking_seconds=1.0)
        threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True).start()
        log.info("worker %s ready on %s (engine %s, queue %s)", self.name, self.device,
                 self.config["pipeline"]["engine"], self._queue.where)
        self._heartbeat(state="idle")
        self._notifier.ready(f"worker on {self.device}: idle")
        try:
            self._loop()
        finally:
            self._notifier.stopping()
            self._stop_heartbeat.set()
            lease.remove_heartbeat(self.spool, socket.gethostname(), os.getpid())
            for engine in self._engines.values():
                with contextlib.suppress(Exception):
                    engine.close()
        return 0

    def _loop(self) -> None:
        assert self._queue is not None
        idle = IDLE_POLL_MIN
        retry = 1.0
        while not self.stopping:
            if self.reload_requested:
                self._reload()
            try:
                job_id = self._queue.take()
                retry = 1.0
            except QueueUnavailable as exc:
                log.warning("%s; retrying in %.0f s", exc, retry)
                self._sleep(retry)
                retry = min(retry * 2, QUEUE_RETRY_MAX)
                continue
            if job_id is None:
                self._sleep(idle)
                idle = min(idle * 2, IDLE_POLL_MAX)
                continue
            idle = IDLE_POLL_MIN
            try:
                self.run_job(job_id)
            except Requeue:
                break

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            time.sleep(min(0.05, seconds))

    def _on_stop(self, signum: int, frame: object) -> None:
        if self.stopping:
            return
        self.stopping = True
        if self.current is not None:
            timeout = float(self.config["queue"]["stop_timeout_seconds"])
            log.info("stopping: giving job %s up to %g s to finish", self.current[0].id, timeout,
                     extra=fields(job_id=self.current[0].id, user=self.current[0].user))
            signal.setitimer(signal.ITIMER_REAL, max(timeout, 0.001))

    def _on_alarm(self, signum: int, frame: object) -> None:
        if self.current is not None:
            raise Requeue()

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
        logmod.setup(new["logging"], service=True)
        log.info("configuration reloaded from %s", self.config_path)

    # --- heartbeats --------------------------------------------------------------------------------

    def _heartbeat_interval(self) -> float:
        return min(HEARTBEAT_MAX_SECONDS, float(self.config["queue"]["lease_seconds"]) / 3)

    def _heartbeat_loop(self) -> None:
        interval = self._heartbeat_interval()
        if self._notifier.watchdog_interval:
            interval = min(interval, self._notifier.watchdog_interval)
        while not self._stop_heartbeat.wait(interval):
            current = self.current
            self._notifier.watchdog()
            if current is not None:
                self._notifier.status(f"job {current[0].id} ({current[0].user}/{current[0].stem}): "
                                      f"{self.stage} {100 * self.progress:.0f}%")
            with contextlib.suppress(OSError):
                with self._lease_lock:  # never rewrite the lease of a job folder being removed
                    if current is not None and self.current is current and \
                            not lease.touch_lease(current[1], self._lease_data(current[0])):
                        self.lost_lease = True
                self._heartbeat(state="busy" if current else ("stopping" if self.stopping else "idle"))

    def _lease_data(self, job: Job) -> dict[str, Any]:
        return {"worker": self.name, "host": socket.gethostname(), "pid": os.getpid(), "device": self.device,
                "job": job.id, "user": job.user, "stage": self.stage, "progress": round(self.progress, 4)}

    def _heartbeat(self, **data: Any) -> None:
        current = self.current
        with contextlib.suppress(OSError):
            lease.write_heartbeat(self.spool, self.name, {
                "host": socket.gethostname(), "device": self.device, "pid": os.getpid(),
                "job": current[0].id if current else None, "user": current[0].user if current else None,
                "stage": self.stage, "progress": round(self.progress, 4),
                "interval": self._heartbeat_interval(), **data})

    def _progress(self, stage: str, fraction: float) -> None:
        self.stage, self.progress = stage, max(0.0, min(1.0, fraction))

    # --- one job -----------------------------------------------------------------------------------

    def engine(self, name: str) -> Any:
        from pipeline.engines import get_engine

        engine = self._engines.get(name)
        if engine is None:
            engine = get_engine(name, self.config["pipeline"])
            engine.check()
            self._engines[name] = engine
        return engine

    def _check_default_engine(self) -> None:
        """Fail start-up when the default engine cannot work; a remote one only gets a warning."""
        from pipeline.engines import EngineUnavailable, get_engine

        name = self.config["pipeline"]["engine"]
        try:
            self.engine(name)
        except EngineUnavailable as exc:
            if not get_engine(name, self.config["pipeline"]).remote:
                raise
            log.warning("engine %s is not reachable now (%s); starting anyway, jobs fail until it is back",
                        name, exc)

    def run_job(self, job_id: str) -> None:
        folder = self.spool / job_id
        lease_seconds = float(self.config["queue"]["lease_seconds"])
        if not lease.take_lease(folder, {"worker": self.name, "host": socket.gethostname(), "pid": os.getpid(),
                                          "device": self.device, "job": job_id}, stale_after=lease_seconds):
            log.debug("job %s is done or held by another worker; skipping the duplicate", job_id)
            return
        try:
            job = load(folder)
        except (OSError, ValueError, TypeError, KeyError) as exc:
            log.error("job %s has an unreadable job.json (%s); moving it to failed/", job_id, exc,
                      extra=fields(job_id=job_id))
            self._fail_unreadable(folder, job_id, str(exc))
            return
        self.current = (job, folder)
        self._progress("starting", 0.0)
        self.lost_lease = False
        self._heartbeat(state="busy")  # status shows the job at once, not at the next heartbeat
        context = fields(job_id=job.id, user=job.user)
        try:
            full = self._disk_full()
            if full:
                raise DiskFull(full)
            job.attempts += 1
            job.state = "running"
            save(folder, job)
            if job.attempts > int(self.config["queue"]["max_attempts"]):
                self._fail(job, folder, f"the worker processing this job stopped unexpectedly {job.attempts - 1} "
                                        "times (crashed or was killed), so lipsyncd gave up on it. The input may "
                                        "make the engine crash; check the log of this job.", engine=None)
                return
            self._execute(job, folder)
        except DiskFull as exc:
            self._requeue(job, folder, f"{exc}; the job waits (it is not failed) until there is room",
                          undo_attempt=job.state == "running")
            self._sleep(min(DISK_FULL_WAIT_MAX, 2 * float(self.config["queue"]["lease_seconds"])))
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            self._requeue(job, folder, f"the disk is full ({exc}); the job waits until there is room",
                          undo_attempt=True)
            self._sleep(min(DISK_FULL_WAIT_MAX, 2 * float(self.config["queue"]["lease_seconds"])))
        except Requeue:
            self._requeue(job, folder, "the worker was stopped before the job finished", undo_attempt=True)
            raise
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            self.current = None
            self._progress("idle", 0.0)
            log.debug("job %s left the worker", job.id, extra=context)

    def _execute(self, job: Job, folder: Path) -> None:
        from pipeline.engines import EngineError, JobSpec

        engine_name = job.engine or self.config["pipeline"]["engine"]
        context = fields(job_id=job.id, user=job.user)
        if job.published and Path(job.published).exists():
            log.info("job %s was already published as %s; finishing", job.id, job.published, extra=context)
            self._finish(job, folder)
            return
        started, started_at = time.monotonic(), time.time()
        timings: dict[str, float] = {"queued": max(0.0, started_at - job.created)}
        audio = folder / job.audio.file
        video = Path(job.video.file) if not job.video.consumed else folder / job.video.file
        log.info("rendering %s with %s on %s (attempt %d)", job.stem, engine_name, self.device, job.attempts,
                 extra=fields(job_id=job.id, user=job.user, stage="render"))
        try:
            self._progress("verify", 0.0)
            t = time.monotonic()
            hashes = {"audio": _sha256(audio), "video": _sha256(video)}
            timings["verify"] = time.monotonic() - t
            engine = self.engine(engine_name)
            work = folder / names.WORK_DIR / self.name  # per attempt: a dead worker's engine writes elsewhere
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            output = work / "output.mp4"
            spec = JobSpec(audio=audio, video=video, output=output, device=self.device, workdir=work,
                           options=job.options)
            t = time.monotonic()
            result = engine.render(spec, self._progress)
            timings["engine"] = time.monotonic() - t
        except EngineError as exc:
            full = self._disk_full()
            if full:  # the engine's own error was most likely "No space left on device"
                raise DiskFull(full) from exc
            self._fail(job, folder, str(exc), engine=engine_name)
            return
        except FileNotFoundError as exc:
            self._fail(job, folder, f"an input file disappeared while the job was queued ({exc.filename}). "
                                    "Drop the pair again.", engine=engine_name)
            return
        except Exception as exc:
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise
            log.exception("internal error in job %s", job.id, extra=fields(job_id=job.id, user=job.user,
                                                                             stage=self.stage))
            self._fail(job, folder, f"lipsyncd hit an internal error while rendering ({type(exc).__name__}: {exc}). "
                                    "This is a bug, not a problem with your files; the log has the details. "
                                    "Report it with the job id, then retry the job.", engine=engine_name)
            return

        self._progress("publish", 1.0)
        t = time.monotonic()
        score = _score(output)
        timings["score"] = time.monotonic() - t
        t = time.monotonic()
        poster = work / "poster.jpg"
        has_poster = _poster(output, poster, result.frames / result.fps if result.fps else 0.0)
        timings["poster"] = time.monotonic() - t
        timings.update({f"engine.{k}": v for k, v in result.timings.items()})
        record = {
            "job_id": job.id, "user": job.user, "name": job.stem, "engine": engine_name, "device": self.device,
            "worker": self.name, "attempts": job.attempts,
            "inputs": {role: {"name": f.name, "size": _size_of(p), "sha256": hashes[role]}
                       for role, f, p in (("audio", job.audio, audio), ("video", job.video, video))},
            "frames": result.frames, "fps": result.fps, "details": result.details,
            "sync_score": score, "created": job.created, "started": started_at, "finished": time.time(),
            "timings": {k: round(v, 4) for k, v in timings.items()}, "output_bytes": output.stat().st_size,
        }
        if job.publish_dir is None:
            job.publish_dir = str(Path(self.config["paths"]["outputs"]) / filing.today() / names.printable(job.user))
            save(folder, job)
        sidecars: dict[str, Any] = {".jpg": poster} if has_poster else {}
        sidecars[".json"] = record  # last: a record means the output is complete
        if self.lost_lease or not lease.owns_lease(folder, self.name):
            log.error("lost the lease of job %s to another worker while it ran here (this worker was stalled "
                      "longer than queue.lease_seconds); not publishing, the other worker's result counts",
                      job.id, extra=fields(job_id=job.id, user=job.user, stage="publish"))
            return
        final = filing.publish(Path(self.config["paths"]["outputs"]), job, output, sidecars=sidecars,
                               publish_dir=Path(job.publish_dir))
        job.published = str(final)
        save(folder, job)
        total = time.monotonic() - started
        sync = f"{score['correlation']:.2f}" if score and "correlation" in score else "n/a"
        log.info("done %s -> %s in %.1f s (sync score %s)", job.stem, final, total, sync,
                 extra=fields(job_id=job.id, user=job.user, stage="done"))
        self._finish(job, folder)
        _notify(self.config, "job_done", job.user, job.stem, job.id, str(final))

    def _finish(self, job: Job, folder: Path) -> None:
        """The output is in place: the consumed inputs and the spool folder go."""
        self._remove_job_folder(folder)

    def _remove_job_folder(self, folder: Path) -> None:
        """Remove a finished or failed job's folder; the heartbeat stops touching its lease first."""
        with self._lease_lock:
            self.current = None
        spool.remove_job_folder(folder)

    def _fail(self, job: Job, folder: Path, reason: str, *, engine: str | None) -> None:
        files = [(folder / f.file, f.name) for f in job.inputs() if f.consumed and (folder / f.file).exists()]
        if not job.video.consumed:
            reason += f"\n\n(The avatar video {job.video.file} was used and is unchanged.)"
        try:
            where = filing.file_failure(Path(self.config["paths"]["failed"]), job.user, job.stem, files, reason,
                                        job=job, engine=engine, device=self.device)
        except OSError as exc:
            log.error("job %s failed (%s) and could not be filed under failed/ (%s); it stays in the spool",
                      job.id, reason.splitlines()[0], exc, extra=fields(job_id=job.id, user=job.user))
            lease.drop_lease(folder)
            return
        log.error("failed %s: %s (inputs and error.txt in %s)", job.stem, reason.splitlines()[0], where,
                  extra=fields(job_id=job.id, user=job.user, stage="failed"))
        self._remove_job_folder(folder)
        _notify(self.config, "job_failed", job.user, job.stem, job.id, reason)

    def _fail_unreadable(self, folder: Path, job_id: str, why: str) -> None:
        files = [(p, p.name) for p in folder.iterdir()
                 if p.is_file() and p.name not in (names.LEASE_FILE, names.JOB_FILE, names.TAKEOVER_LOCK)]
        filing.file_failure(Path(self.config["paths"]["failed"]), "unknown", job_id, files,
                            f"the job's record (job.json) is damaged: {why}")
        self._remove_job_folder(folder)

    def _disk_full(self) -> str | None:
        """Why there is no room to run a job (spool or outputs nearly full), or None."""
        for key in ("spool", "outputs"):
            folder = Path(self.config["paths"][key])
            try:
                free = shutil.disk_usage(folder).free
            except OSError:
                continue
            if free < MIN_FREE_BYTES:
                return (f"the disk holding paths.{key} ({folder}) is full: {free // (1024 * 1024)} MB free, "
                        f"at least {MIN_FREE_BYTES // (1024 * 1024)} MB needed")
        return None

    def _requeue(self, job: Job, folder: Path, why: str, *, undo_attempt: bool) -> None:
        job.state = "queued"
        if undo_attempt:
            job.attempts = max(0, job.attempts - 1)  # a stop or a full disk is not the job's fault
        with contextlib.suppress(OSError):
            save(folder, job)
        lease.drop_lease(folder)
        try:
            assert self._queue is not None
            self._queue.put(job.id, priority=REQUEUE_PRIORITY)
            log.warning("%s; job %s is back on the queue", why, job.id, extra=fields(job_id=job.id, user=job.user))
        except QueueUnavailable as exc:
            log.warning("%s; %s (the daemon queues it again later)", why, exc,
                        extra=fields(job_id=job.id, user=job.user))


def _size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _score(video: Path) -> dict[str, Any] | None:
    """The engine-independent sync score of an output; {"error": why} when it cannot be computed (no face,
    no sound): a missing score never fails a finished render."""
    from pipeline.engines import EngineError
    from pipeline.syncscore import sync_score

    try:
        return sync_score(video).to_dict()
    except EngineError as exc:
        return {"error": str(exc)}
    except Exception as exc:  # noqa: BLE001
        log.warning("no sync score for %s: %s", video.name, exc)
        return {"error": f"{type(exc).__name__}: {exc}"}


def _poster(video: Path, poster: Path, duration: float) -> bool:
    """A JPEG still from a third of the way in (one ffmpeg run: seek, decode one frame)."""
    for at in (duration / 3, 0.0) if duration > 0 else (0.0,):
        try:
            done = subprocess.run(["ffmpeg", "-v", "error", "-y", "-ss", f"{at:.3f}", "-i", f"file:{video}",
                                   "-frames:v", "1", "-q:v", "3", f"file:{poster}"], capture_output=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("no poster for %s: %s", video.name, exc)
            return False
        if done.returncode == 0 and poster.exists() and poster.stat().st_size > 0:
            return True
    log.warning("no poster for %s: %s", video.name, done.stderr.decode("utf-8", "replace").strip()[-200:])
    return False


def _notify(config: Mapping[str, Any], event: str, user: str, stem: str, job_id: str, detail: str) -> None:
    """Job events go out through daemon.notify.send, which honours notify.events and never raises."""
    from daemon.notify.send import notify_job

    notify_job(config, event, user, stem, job_id, detail)


def main(config: configmod.Config, device: str | None, config_path: str | os.PathLike[str] | None) -> int:
    logmod.setup(config["logging"], service=True)
    configmod.ensure_folders(config, ("spool", "outputs", "failed", "state"))
    device = device or configmod.devices(config)[0]
    return Worker(config, device, config_path).main()
