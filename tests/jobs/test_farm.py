"""Farm mode: several hosts share one inbox through Redis (issue 7).

Everything is real: a redis-server on a free port of 127.0.0.1 started here, `lipsyncd run` as the
watcher host (queue.local_workers: false), and two `lipsyncd worker --device cpu` processes with their
own paths.state that stand for two GPU hosts. Where `unshare -u` works (root), each runs under its own
host name in its own UTS namespace, so heartbeats and `lipsyncd status` show hostA and hostB; records and
leases name the worker <host>-<device>-<pid> in any case, and the pid tells which "host" did what.
Inbox, spool, outputs and failed are shared folders, as on NFS. Jobs use the command engine: a sleep
(so a job can be killed mid-way), then a real ffmpeg mux (a plain copy in the 100-job test).

The harness (RedisServer, Farm) is also used by bench/farm.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from daemon import names
from daemon.jobs import lease, spool
from daemon.jobs.workers import describe, worker_table

ROOT = Path(__file__).resolve().parents[2]
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
LEASE_SECONDS = 3  # small, so a dead host's job comes back within seconds
DAEMON_HOST = "hostD"


def sleep_then_mux(seconds: float) -> list[str]:
    """A command-engine argv: sleep, then mux the video with the audio (a fixed-length job)."""
    script = (f'sleep {seconds}; exec ffmpeg -y -v error -i "$1" -i "$2" -map 0:v -map 1:a -c:v copy -c:a aac '
              '-shortest "$3"')
    return ["sh", "-c", script, "sh", "{video}", "{audio}", "{output}"]


def sleep_then_copy(seconds: float) -> list[str]:
    """A command-engine argv: sleep, then copy the input video to the output (no CPU work at all)."""
    return ["sh", "-c", f'sleep {seconds}; exec cp "$1" "$2"', "sh", "{video}", "{output}"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def can_set_hostname() -> bool:
    """True where `unshare -u` works (root, no seccomp ban), so each worker gets a host name of its own."""
    try:
        return subprocess.run(["unshare", "-u", "hostname", "probe"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


HOST_NAMES = can_set_hostname()


class RedisServer:
    """A throw-away redis-server (no persistence, like a Redis that restarts empty) that can be stopped and
    started again on the same port."""

    def __init__(self, folder: Path, port: int | None = None) -> None:
        self.folder = folder
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        if not os.path.exists(REDIS_SERVER):
            pytest.fail("redis-server is not installed (apt-get install redis-server; ./dev.sh test does it)")
        log = open(self.folder / "redis.log", "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--daemonize", "no", "--dir", str(self.folder)], stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=1)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.RedisError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server did not start on port {self.port}: "
                                       f"{(self.folder / 'redis.log').read_text()[-2000:]}") from None
                time.sleep(0.05)
        client.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # with --save '' nothing is written: the queue is gone, as after a crash
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def descendants(pid: int) -> list[int]:
    """Every process below *pid* (the command engine puts its children in a session of their own)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


class Farm:
    """Shared folders plus one config per host; starts `lipsyncd run` and workers as real processes."""

    def __init__(self, root: Path, redis_url: str, argv: list[str], **queue: Any) -> None:
        self.root = root
        self.shared = root / "shared"
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.redis_url = redis_url
        self.argv = argv
        self.queue = {"url": redis_url, "lease_seconds": LEASE_SECONDS, "stop_timeout_seconds": 5,
                      "local_workers": False, **queue}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.hosts: dict[int, str] = {}  # pid of every process started -> the host it stands for
        self.orphans: list[int] = []  # command children left behind by a worker killed alone

    def config_for(self, host: str) -> Path:
        path = self.root / f"{host}.yaml"
        data = {
            "paths": {"inbox": str(self.shared / "inbox"), "outputs": str(self.shared / "outputs"),
                      "failed": str(self.shared / "failed"), "spool": str(self.shared / "spool"),
                      "avatars": str(self.shared / "avatars"), "state": str(self.root / host / "state")},
            "ingest": {"settle_seconds": 0.3, "rescan_seconds": 2, "poll": False},
            "pipeline": {"engine": "command", "device": "cpu", "command": {"argv": self.argv, "timeout_seconds": 120}},
            "queue": self.queue,
            "logging": {"level": "INFO", "file": str(self.logs / f"{host}.log")},
        }
        path.write_text(yaml.safe_dump(data))
        return path

    def _start(self, host: str, *args: str) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "daemon.cli", "--config", str(self.config_for(host)), *args]
        if HOST_NAMES:
            argv = ["unshare", "-u", "sh", "-c", 'hostname "$0" && exec "$@"', host, *argv]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LIPSYNCD_CONFIG"):
            env.pop(name, None)
        with open(self.logs / f"{host}.stderr", "ab") as err:
            proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                    start_new_session=True)
        self.procs[host] = proc
        self.hosts[proc.pid] = host  # unshare and sh exec the program: the pid is the worker's own
        return proc

    def start_daemon(self) -> None:
        self._start(DAEMON_HOST, "run")
        self.wait_for(lambda: "watching" in self.log(DAEMON_HOST), 30, "the daemon to watch the inbox")

    def start_worker(self, host: str) -> None:
        before = self.log(host).count("ready on")
        self._start(host, "worker", "--device", "cpu")
        self.wait_for(lambda: self.log(host).count("ready on") > before, 30, f"worker {host} to be ready")

    def kill_host(self, host: str) -> None:
        """SIGKILL the worker and everything it started, as when its host loses power."""
        proc = self.procs.pop(host)
        victims = [proc.pid, *descendants(proc.pid)]
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()

    def kill_worker_only(self, host: str) -> None:
        """SIGKILL the worker process alone (OOM killer); what it started keeps running, orphaned."""
        proc = self.procs.pop(host)
        self.orphans += descendants(proc.pid)
        proc.kill()
        proc.wait()

    def stop(self) -> None:
        children = [d for proc in self.procs.values() for d in descendants(proc.pid)]
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for pid in [*self.orphans, *children]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.procs.clear()

    # --- what the farm did ------------------------------------------------------------------------

    def heartbeat_job(self, host: str) -> str | None:
        """The job *host*'s worker last reported in its heartbeat file."""
        pid = self.procs[host].pid
        rows = [row for row in worker_table(self.shared / "spool", include_replaced=True) if row["pid"] == pid]
        return rows[0]["job"] if rows else None

    def host_of(self, worker: str) -> str | None:
        """The host a worker name (<host>-<device>-<pid>, from a record or lease) stands for."""
        pid = worker.rsplit("-", 1)[-1]
        return self.hosts.get(int(pid)) if pid.isdigit() else None

    def status(self, host: str = DAEMON_HOST) -> dict[str, Any]:
        """`lipsyncd status --json` as *host* runs it."""
        done = subprocess.run([sys.executable, "-m", "daemon.cli", "--config", str(self.config_for(host)), "status",
                               "--json"], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def log(self, host: str) -> str:
        try:
            return (self.logs / f"{host}.log").read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def drop(self, user: str, stem: str, video: Path, audio: Path) -> None:
        """Put a pair into inbox/<user>/ the way rsync does: a dot-named temp file renamed into place."""
        folder = self.shared / "inbox" / user
        folder.mkdir(parents=True, exist_ok=True)
        for src, name in ((video, f"{stem}.mp4"), (audio, f"{stem}.wav")):
            temp = folder / f".{name}.tmp"
            shutil.copyfile(src, temp)
            os.rename(temp, folder / name)

    def outputs(self) -> list[Path]:
        return sorted(p for p in (self.shared / "outputs").rglob("*.mp4") if not p.name.startswith("."))

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(p.with_suffix(".json").read_text()) for p in self.outputs()]

    def failed(self) -> list[Path]:
        return sorted((self.shared / "failed").rglob("error.txt"))

    def spool_jobs(self) -> list[spool.SpoolEntry]:
        return list(spool.jobs(self.shared / "spool"))

    def leases(self) -> dict[str, dict[str, Any]]:
        """Job id -> lease of every job a worker holds now (fresh leases only)."""
        return {e.id: e.lease for e in self.spool_jobs()
                if e.lease is not None and e.lease_age is not None and e.lease_age < LEASE_SECONDS}

    def running_on(self, host: str) -> list[str]:
        """Ids of the jobs *host*'s worker is in the middle of: lease held, attempt counted in job.json, and
        the engine's command (its sleep) running, so a kill now is a kill mid-render, not mid-publish."""
        pid = self.procs[host].pid
        if not any(b"sleep" in _cmdline(child) for child in descendants(pid)):
            return []
        return [e.id for e in self.spool_jobs() if e.job is not None and e.job.state == "running"
                and e.lease is not None and e.lease.get("pid") == pid
                and e.lease_age is not None and e.lease_age < LEASE_SECONDS]

    def inbox_files(self) -> list[Path]:
        return [p for p in (self.shared / "inbox").rglob("*") if p.is_file()]

    def wait_for(self, condition: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = condition()
            if value:
                return value
            for host, proc in self.procs.items():
                if proc.poll() is not None:
                    raise AssertionError(f"{host} exited with status {proc.returncode} while waiting for {what}\n"
                                         + self.diagnostics())
            time.sleep(0.1)
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n" + self.diagnostics())

    def diagnostics(self) -> str:
        lines = [f"outputs: {len(self.outputs())}, failed: {len(self.failed())}, "
                 f"inbox files: {len(self.inbox_files())}",
                 "spool: " + ", ".join(f"{e.id} lease={bool(e.lease)} age={e.lease_age}" for e in self.spool_jobs())]
        for path in sorted(self.logs.iterdir()):
            lines.append(f"--- {path.name} (last lines)")
            lines += path.read_text(errors="replace").splitlines()[-25:]
        return "\n".join(lines)


# --- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def make_farm(tmp_path: Path, redis_server: RedisServer) -> Iterator[Callable[..., Farm]]:
    farms: list[Farm] = []

    def make(argv: list[str], **queue: Any) -> Farm:
        farm = Farm(tmp_path / "farm", redis_server.url, argv, **queue)
        farms.append(farm)
        return farm

    yield make
    for farm in farms:
        farm.stop()


def assert_each_done_once(farm: Farm, expected: set[str]) -> list[dict[str, Any]]:
    """*expected*: "<user>/<stem>" of every pair dropped. Exactly one output each, nothing failed or left."""
    farm.wait_for(lambda: not farm.spool_jobs(), 30, "the spool to empty")
    outputs = farm.outputs()
    names = sorted(f"{p.parent.name}/{p.stem}" for p in outputs)
    assert names == sorted(expected), f"outputs differ from the pairs dropped (a duplicate is <stem>-2): {names}"
    records = farm.records()
    job_ids = [r["job_id"] for r in records]
    assert len(set(job_ids)) == len(job_ids) == len(expected), "a job id appears in two records"
    for record, output in zip(records, outputs, strict=True):
        stem = output.stem
        assert record["name"] == stem and record["user"] == output.parent.name
        assert record["inputs"]["audio"]["name"] == f"{stem}.wav"
        assert record["inputs"]["video"]["name"] == f"{stem}.mp4"
        assert output.stat().st_size == record["output_bytes"] > 0
    assert farm.failed() == [], [p.read_text() for p in farm.failed()]
    assert farm.inbox_files() == []
    leftovers = [p.name for p in (farm.shared / "outputs").rglob(".*")]
    assert leftovers == [], f"temp files left in outputs/: {leftovers}"
    return records


# --- tests ------------------------------------------------------------------------------------------


def test_worker_table_flags_workers_that_stopped_heartbeating(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    now = time.time()

    def beat(name: str, age: float, **data: Any) -> None:
        lease.write_heartbeat(spool_dir, name, {"interval": 2.0, "job": None, **data})
        path = spool_dir / names.WORKERS_DIR / f"{name}.json"
        written = json.loads(path.read_text())
        written["updated"] = now - age
        path.write_text(json.dumps(written))

    beat("gpu1-cuda0-11", 1, host="gpu1", device="cuda:0", pid=11, state="busy", job="20261127-1-aaaaaa",
         user="alice", stage="render", progress=0.4)
    beat("gpu2-cuda0-22", 60, host="gpu2", device="cuda:0", pid=22, state="busy", job="20261127-2-bbbbbb",
         user="bob", stage="render", progress=0.1)  # gpu2 went silent a minute ago
    beat("gpu3-cuda1-33", 600, host="gpu3", device="cuda:1", pid=33, state="error",
         error="pipeline.wav2lip.checkpoint is not set")  # never started: silence is expected
    beat("gpu4-cuda0-40", 300, host="gpu4", device="cuda:0", pid=40, state="busy", job="20261127-4-dddddd")
    beat("gpu4-cuda0-41", 0.5, host="gpu4", device="cuda:0", pid=41, state="idle")  # systemd restarted it
    (spool_dir / names.WORKERS_DIR / "broken.json").write_text("{not json")

    rows = worker_table(spool_dir, now=now)
    assert [(r["host"], r["pid"]) for r in rows] == [("gpu1", 11), ("gpu2", 22), ("gpu3", 33), ("gpu4", 41)]
    busy, silent, broken, restarted = rows
    assert (busy["stale"], busy["job"], busy["stage"], busy["progress"]) == (False, "20261127-1-aaaaaa", "render", 0.4)
    assert busy["heartbeat_age_seconds"] == pytest.approx(1, abs=0.2)
    assert silent["stale"] and silent["heartbeat_age_seconds"] == pytest.approx(60, abs=0.2)
    assert not broken["stale"] and broken["state"] == "error"
    assert not restarted["stale"] and restarted["state"] == "idle"
    assert len(worker_table(spool_dir, now=now, include_replaced=True)) == 5

    assert describe(busy) == "gpu1 cuda:0 pid 11: busy, job 20261127-1-aaaaaa (alice) render 40%, heartbeat 1 s ago"
    assert describe(silent) == ("gpu2 cuda:0 pid 22: NOT HEARTBEATING (last 60 s ago): the worker or its host "
                                "stopped; its job 20261127-2-bbbbbb is re-queued when the lease expires")
    assert "error: pipeline.wav2lip.checkpoint is not set" in describe(broken)


def test_reaper_removes_folders_left_with_only_a_stale_lease(tmp_path: Path, redis_server: RedisServer) -> None:
    from daemon import config as configmod
    from daemon.jobs.queue import JobQueue
    from daemon.jobs.reaper import reap

    config = configmod.load(None, required=False, overrides={
        "paths": {name: str(tmp_path / name) for name in ("inbox", "outputs", "failed", "spool", "state")},
        "queue": {"url": redis_server.url, "lease_seconds": LEASE_SECONDS}})
    spool_dir = tmp_path / "spool"
    old = time.time() - 10 * LEASE_SECONDS
    leftover, holds_input, fresh = spool_dir / "20261127-1-aaaaaa", spool_dir / "20261127-2-bbbbbb", \
        spool_dir / "20261127-3-cccccc"
    for folder in (leftover, holds_input, fresh):
        folder.mkdir(parents=True)
        (folder / "lease").write_text('{"worker": "gpu1-cpu-1"}')
    (holds_input / "audio.wav").write_bytes(b"RIFF")  # a person's file: never removed by the reaper
    for folder in (leftover, holds_input):
        os.utime(folder / "lease", (old, old))
    queue = JobQueue(config)
    reap(config, queue)
    queue.close()
    assert not leftover.exists()
    assert (holds_input / "audio.wav").exists() and fresh.exists()


def test_dead_host_job_is_rerun_once_by_the_other_host(make_farm: Callable[..., Farm], small_mp4: Path,
                                                        short_wav: Path) -> None:
    farm = make_farm(sleep_then_mux(2))
    farm.start_daemon()
    farm.start_worker("hostA")
    farm.start_worker("hostB")

    # 1. hostA loses power mid-job: its worker and the command it runs die at once.
    farm.drop("alice", "one", small_mp4, short_wav)
    farm.drop("bob", "two", small_mp4, short_wav)
    farm.wait_for(lambda: farm.running_on("hostA") and farm.running_on("hostB"), 30, "both hosts to hold a job")
    victim = farm.running_on("hostA")[0]
    farm.wait_for(lambda: farm.heartbeat_job("hostA") == victim, 10, "hostA's heartbeat to name its job")
    farm.kill_host("hostA")
    farm.wait_for(lambda: len(farm.outputs()) == 2, 40, "hostB to finish both jobs")
    records = {r["job_id"]: r for r in assert_each_done_once(farm, {"alice/one", "bob/two"})}
    assert records[victim]["attempts"] == 2
    assert farm.host_of(records[victim]["worker"]) == "hostB"
    assert f"re-queued job {victim}" in farm.log(DAEMON_HOST)
    assert "stopped heartbeating" in farm.log(DAEMON_HOST)
    assert f"done {records[victim]['name']}" in farm.log("hostB")
    if HOST_NAMES:
        farm.wait_for(lambda: (rows := {r["host"]: r for r in worker_table(farm.shared / "spool")})["hostA"]["stale"]
                      and rows["hostB"]["state"] == "idle", 15, "hostA flagged as not heartbeating, hostB idle")
        rows = {row["host"]: row for row in worker_table(farm.shared / "spool")}
        assert rows["hostA"]["job"] == victim and "NOT HEARTBEATING" in describe(rows["hostA"])
        assert not rows["hostB"]["stale"] and rows["hostB"]["state"] == "idle"
        assert DAEMON_HOST not in rows, "queue.local_workers: false must start no worker on the watcher host"
        shown = {w["host"]: w for w in farm.status()["workers"]}  # the real `lipsyncd status --json`
        assert sorted(shown) == ["hostA", "hostB"]
        assert shown["hostA"]["stale"] and shown["hostA"]["job"] == victim
        assert not shown["hostB"]["stale"]

    # 2. hostA comes back; now only hostB's worker process is SIGKILLed (its command lives on, orphaned).
    farm.start_worker("hostA")
    if HOST_NAMES:
        hosts = [row["host"] for row in worker_table(farm.shared / "spool")]
        assert sorted(hosts) == ["hostA", "hostB"], "the dead hostA worker is replaced by the restarted one"
    farm.drop("alice", "three", small_mp4, short_wav)
    farm.drop("bob", "four", small_mp4, short_wav)
    farm.wait_for(lambda: farm.running_on("hostA") and farm.running_on("hostB"), 30, "both hosts to hold a job")
    victim = farm.running_on("hostB")[0]
    farm.kill_worker_only("hostB")
    assert farm.orphans, "the killed worker's command should live on (that is the point of this case)"
    farm.wait_for(lambda: len(farm.outputs()) == 4, 40, "hostA to finish both jobs")
    records = {r["job_id"]: r for r in assert_each_done_once(farm, {"alice/one", "bob/two", "alice/three",
                                                                    "bob/four"})}
    assert records[victim]["attempts"] == 2
    assert farm.host_of(records[victim]["worker"]) == "hostA"
    assert {farm.host_of(r["worker"]) for r in records.values()} <= {"hostA", "hostB"}, "no worker on the watcher host"


def test_redis_outage_claims_wait_in_spool_and_catch_up(make_farm: Callable[..., Farm], redis_server: RedisServer,
                                                        small_mp4: Path, short_wav: Path) -> None:
    farm = make_farm(sleep_then_mux(1))
    farm.start_daemon()
    farm.start_worker("hostA")
    farm.start_worker("hostB")
    expected = set()
    for i in range(4):
        farm.drop("alice", f"before-{i}", small_mp4, short_wav)
        expected.add(f"alice/before-{i}")
    farm.wait_for(lambda: len(farm.leases()) == 2, 30, "both hosts to be busy")

    redis_server.stop()  # running jobs go on; the 2 queued ones are lost with Redis (no persistence)
    for i in range(6):
        farm.drop("bob", f"during-{i}", small_mp4, short_wav)
        expected.add(f"bob/during-{i}")
    # The watcher keeps claiming: every pair leaves the inbox for the spool, where it waits.
    farm.wait_for(lambda: not farm.inbox_files() and sum(1 for e in farm.spool_jobs()
                                                         if e.job and e.job.user == "bob") == 6,
                  30, "the pairs dropped while Redis is down to be claimed into the spool")
    farm.wait_for(lambda: len(farm.outputs()) >= 2, 30, "the jobs already running to finish without Redis")
    # Workers back off: 1 s, 2 s, 4 s ... between tries, and say so.
    farm.wait_for(lambda: all("retrying in 2 s" in farm.log(h) for h in ("hostA", "hostB")), 30,
                  "both workers to back off")
    daemon_log = farm.log(DAEMON_HOST)
    assert "cannot be reached" in daemon_log
    assert "the job waits in the spool and is queued when the queue is back" in daemon_log

    redis_server.start()  # empty: whatever was queued before is gone
    farm.wait_for(lambda: len(farm.outputs()) == 10, 60, "every job to be done after Redis came back")
    assert_each_done_once(farm, expected)
    daemon_log = farm.log(DAEMON_HOST)
    assert "is reachable again" in daemon_log
    assert daemon_log.count("because it was not on the queue") >= 6
    for host in ("hostA", "hostB"):
        assert "is reachable again" in farm.log(host)


def test_hundred_jobs_two_hosts_kill_and_redis_restart_each_done_once(
        make_farm: Callable[..., Farm], redis_server: RedisServer, small_mp4: Path, short_wav: Path) -> None:
    # A copy instead of a mux: the output has no sound, so the worker skips the sync score (about 1 CPU-s
    # a job on this tiny clip) and 100 jobs fit the time budget; the queue and leases are the same.
    farm = make_farm(sleep_then_copy(0.3))
    farm.start_daemon()
    farm.start_worker("hostA")
    farm.start_worker("hostB")
    expected = set()
    for i in range(100):
        user = ("alice", "bob", "carol")[i % 3]
        farm.drop(user, f"clip-{i:03d}", small_mp4, short_wav)
        expected.add(f"{user}/clip-{i:03d}")

    # hostA dies mid-job at about a quarter of the way, and comes back a second later (systemd restarts it).
    farm.wait_for(lambda: len(farm.outputs()) >= 25, 90, "a quarter of the jobs")
    killed_job = farm.wait_for(lambda: farm.running_on("hostA"), 30, "hostA to be in the middle of a job")[0]
    farm.kill_host("hostA")
    time.sleep(1)
    farm.start_worker("hostA")

    # Redis restarts (empty) at a little past half way.
    farm.wait_for(lambda: len(farm.outputs()) >= 55, 90, "more than half of the jobs")
    redis_server.stop()
    time.sleep(3)
    redis_server.start()

    farm.wait_for(lambda: len(farm.outputs()) >= 100, 150, "all 100 jobs")
    records = assert_each_done_once(farm, expected)
    by_host: dict[str | None, int] = {}
    for record in records:
        host = farm.host_of(record["worker"])
        by_host[host] = by_host.get(host, 0) + 1
    killed = next(r for r in records if r["job_id"] == killed_job)
    assert killed["attempts"] == 2, "the job of the killed host ran again, once"
    assert sum(r["attempts"] for r in records) == 101, "only the killed job ran twice"
    assert set(by_host) == {"hostA", "hostB"}, f"only the two worker hosts render (local_workers: false): {by_host}"
    assert min(by_host.values()) >= 10, f"both hosts did a fair share: {by_host}"
