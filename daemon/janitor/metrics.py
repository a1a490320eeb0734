"""The Prometheus textfile (metrics.textfile) that node_exporter's textfile collector picks up.

Written whole with temp + rename at the end of each janitor pass, so the collector never reads half a
file. Plain text format 0.0.4, no client library needed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from daemon.files import write_atomic

PREFIX = "lipsyncd_"


@dataclass
class Metric:
    name: str
    help: str
    kind: str = "gauge"
    samples: list[tuple[dict[str, str], float]] = field(default_factory=list)

    def add(self, value: float, **labels: str) -> Metric:
        self.samples.append((labels, value))
        return self


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def render(metrics: Iterable[Metric]) -> str:
    lines: list[str] = []
    for m in metrics:
        name = PREFIX + m.name
        lines.append(f"# HELP {name} {m.help}")
        lines.append(f"# TYPE {name} {m.kind}")
        for labels, value in m.samples:
            text = ",".join(f'{k}="{_escape(str(v))}"' for k, v in sorted(labels.items()))
            lines.append(f"{name}{{{text}}} {_number(value)}" if text else f"{name} {_number(value)}")
    return "\n".join(lines) + "\n"


def write(path: str, metrics: Iterable[Metric]) -> None:
    write_atomic(path, render(metrics))


def janitor_metrics(*, filesystems: Iterable[Mapping[str, object]], users: Mapping[str, list[int]],
                    jobs: Mapping[str, int], freed: int, deleted_files: int, pinned_bytes: int,
                    freed_total: int, log_file_bytes: int | None, started: float, duration: float,
                    success: bool, notify_failures: int) -> list[Metric]:
    """The metrics of one pass. filesystems: FsUsage.to_dict() plus "level" (0 ok, 1 warn, 2 critical)."""
    ratio = Metric("disk_used_ratio", "Used fraction of a filesystem holding lipsyncd folders (as df computes it).")
    avail = Metric("disk_avail_bytes", "Bytes available to unprivileged users on that filesystem.")
    level = Metric("disk_alert_level", "Disk alert level of that filesystem: 0 ok, 1 warn, 2 critical.")
    for fs in filesystems:
        labels = {"mountpoint": str(fs["mount"]), "folders": ",".join(fs["folders"])}  # type: ignore[arg-type]
        size = float(fs["size"]) or 1.0  # type: ignore[arg-type]
        ratio.add(float(fs["used"]) / size, **labels)  # type: ignore[arg-type]
        avail.add(float(fs["avail"]), **labels)  # type: ignore[arg-type]
        level.add(float(fs.get("level", 0)), **labels)  # type: ignore[arg-type]
    out_bytes = Metric("outputs_bytes", "Bytes of results under outputs/, per user, after this pass.")
    out_files = Metric("outputs_files", "Files under outputs/, per user, after this pass.")
    for user in sorted(users):
        out_bytes.add(users[user][0], user=user)
        out_files.add(users[user][1], user=user)
    job_metric = Metric("jobs", "Jobs by state: spool job.json states, and failed/ entries.")
    for state in sorted(jobs):
        job_metric.add(jobs[state], state=state)
    metrics = [ratio, avail, level, out_bytes, out_files, job_metric,
               Metric("janitor_freed_bytes", "Bytes the last janitor pass deleted.").add(freed),
               Metric("janitor_deleted_files", "Files the last janitor pass deleted.").add(deleted_files),
               Metric("janitor_freed_bytes_total", "Bytes deleted by all janitor passes recorded in paths.state.",
                      "counter").add(freed_total),
               Metric("janitor_pinned_bytes", "Bytes kept because a .keep marker pins them.").add(pinned_bytes),
               Metric("janitor_last_run_timestamp_seconds", "When the last janitor pass started (Unix time).")
               .add(round(started, 3)),
               Metric("janitor_last_run_duration_seconds", "How long the last janitor pass took.")
               .add(round(duration, 4)),
               Metric("janitor_last_run_success", "1 when the last janitor pass did all it had to do.").add(success),
               Metric("janitor_notify_failures", "Notifications the last pass could not send (retried next pass).")
               .add(notify_failures)]
    if log_file_bytes is not None:
        metrics.append(Metric("log_file_bytes", "Size of logging.file plus its rotated copies.").add(log_file_bytes))
    return metrics


def archive_metrics(*, bytes_total: int, failures: int, oldest_unarchived_age: float | None,
                    backlog_outputs: int) -> list[Metric]:
    """The archive's metrics (janitor.archive.url set): what went, what failed, how far behind it is."""
    return [Metric("archive_bytes_total", "Bytes copied to the archive and verified, all passes.", "counter")
            .add(bytes_total),
            Metric("archive_failures", "Outputs the last janitor pass could not archive (retried next pass).")
            .add(failures),
            Metric("archive_oldest_unarchived_age_seconds",
                   "Age of the oldest output whose video has no verified archived copy (0: none).")
            .add(round(oldest_unarchived_age or 0.0, 1)),
            Metric("archive_backlog_outputs", "Outputs old enough to be archived that are not yet.")
            .add(backlog_outputs)]
