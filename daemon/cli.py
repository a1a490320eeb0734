"""The `lipsyncd` command line: one entry point, thin subcommands that import their module on use.

Exit status: 0 done, 1 the work failed, 2 bad usage or configuration. Heavy modules (torch, the
pipeline) are imported only by the subcommands that need them, so `janitor` and `status` start fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from daemon import config as configmod
from daemon.config import Config, ConfigError
from daemon.names import Exit
from pipeline import engines  # the registry of engine names (light: no torch)


def _load(args: argparse.Namespace, *, required: bool = True, layout: bool = False) -> Config:
    """The configuration; with *layout*, also refuse a paths section the janitor would refuse (exit 2)."""
    path = args.config or configmod.default_config_path()
    config = configmod.load(path, required=required)
    if layout:
        configmod.check_layout(config)
    return config


def cmd_run(args: argparse.Namespace) -> int:
    from daemon import service

    return service.main(_load(args), config_path=args.config or configmod.default_config_path())


def cmd_worker(args: argparse.Namespace) -> int:
    from daemon.jobs import worker

    return worker.main(_load(args, layout=True), device=args.device,
                       config_path=args.config or configmod.default_config_path())


def cmd_janitor(args: argparse.Namespace) -> int:
    from daemon import janitor

    return janitor.main(_load(args), dry_run=args.dry_run, as_json=args.json)


def cmd_status(args: argparse.Namespace) -> int:
    from daemon.commands import status

    return status.main(_load(args), as_json=args.json, user=args.user)


def cmd_submit(args: argparse.Namespace) -> int:
    from daemon.commands import submit

    return submit.main(_load(args, layout=True), Path(args.audio), Path(args.video), user=args.user, name=args.name)


def cmd_retry(args: argparse.Namespace) -> int:
    from daemon.commands import retry

    return retry.main(_load(args, layout=True), args.target)


def cmd_doctor(args: argparse.Namespace) -> int:
    from daemon.commands import doctor

    return doctor.main(_load(args))


def cmd_render(args: argparse.Namespace) -> int:
    from daemon.commands import render

    return render.main(_load(args, required=False), Path(args.audio), Path(args.video), Path(args.output),
                       engine=args.engine, device=args.device, quiet=args.quiet)


def cmd_sync_score(args: argparse.Namespace) -> int:
    from pipeline.errors import EngineError
    from pipeline.syncscore import sync_score

    try:
        score = sync_score(Path(args.video), audio=Path(args.audio) if args.audio else None)
    except EngineError as exc:
        print(f"lipsyncd sync-score: {exc}", file=sys.stderr)
        return Exit.FAILED
    if args.json:
        print(json.dumps(score.to_dict(), indent=2))
    else:
        print(score.describe())
    return Exit.OK


def cmd_restore(args: argparse.Namespace) -> int:
    from daemon.commands import restore

    return restore.main(_load(args, layout=True), args.target)


def cmd_demo(args: argparse.Namespace) -> int:
    from daemon.commands import demo

    return demo.main(engine=args.engine, workdir=Path(args.dir) if args.dir else None)


def cmd_web(args: argparse.Namespace) -> int:
    from daemon.web import server

    return server.main(_load(args))


def cmd_web_user(args: argparse.Namespace) -> int:
    import getpass

    from daemon.web.auth import AccountError, Accounts

    accounts = Accounts(_load(args).paths.state)
    try:
        if args.action == "remove":
            accounts.remove(args.name)
        else:
            password = sys.stdin.readline().rstrip("\n") if args.password_stdin else getpass.getpass(
                f"password for {args.name}: ")
            if not args.password_stdin and getpass.getpass("again: ") != password:
                print("lipsyncd web-user: the passwords differ; nothing changed", file=sys.stderr)
                return Exit.USAGE
            accounts.set(args.name, password, new=args.action == "add")
    except AccountError as exc:
        print(f"lipsyncd web-user: {exc}", file=sys.stderr)
        return Exit.FAILED
    except OSError as exc:
        print(f"lipsyncd web-user: cannot write {accounts.path}: {exc.strerror or exc}", file=sys.stderr)
        return Exit.FAILED
    print(f"{args.name}: {'removed' if args.action == 'remove' else 'password set'} ({accounts.path})")
    return Exit.OK


def cmd_users(args: argparse.Namespace) -> int:
    from daemon.commands import users

    return users.main(_load(args, layout=True), args.action, args.name, as_json=args.json)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lipsyncd",
        description="Audio-driven lip-sync as a service: watch an inbox, render, file dated outputs, keep the "
                    "disk clean.",
    )
    parser.add_argument("--config", metavar="FILE",
                        help="configuration file (default: $LIPSYNCD_CONFIG, then /etc/lipsyncd/lipsyncd.yaml)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, func: Callable[[argparse.Namespace], int], text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=text, description=text)
        p.set_defaults(func=func)
        return p

    add("run", cmd_run, "run the daemon in the foreground (systemd runs this)")
    p = add("worker", cmd_worker, "run one worker alone (for extra GPU hosts)")
    p.add_argument("--device", help="auto, cpu or cuda:N (default: the first of pipeline.device)")
    p = add("janitor", cmd_janitor, "one janitor pass: prune expired outputs, check disk usage, alert")
    p.add_argument("--dry-run", action="store_true", help="print what a real pass would do; change nothing")
    p.add_argument("--json", action="store_true", help="print the plan/result as JSON")
    p = add("status", cmd_status, "queue, running jobs with progress, recent failures, disk")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--user", metavar="NAME", help="only this person's queue, results and failures")
    p = add("submit", cmd_submit, "copy an audio/video pair into the inbox safely")
    p.add_argument("audio")
    p.add_argument("video")
    p.add_argument("--user", help="whose inbox folder (default: ingest.default_user)")
    p.add_argument("--name", help="the job's name (stem) (default: the video's name)")
    p = add("retry", cmd_retry, "re-queue a failed job")
    p.add_argument("target", metavar="JOB-ID|FAILED-DIR")
    add("doctor", cmd_doctor, "check ffmpeg, devices, folders, permissions, inotify limits, notifiers")
    p = add("render", cmd_render, "render one job without the daemon, with a progress bar")
    p.add_argument("audio")
    p.add_argument("video")
    p.add_argument("-o", "--output", required=True, metavar="OUT.mp4")
    p.add_argument("--engine", choices=engines.NAMES, help="default: pipeline.engine")
    p.add_argument("--device", help="auto, cpu or cuda:N (default: pipeline.device)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p = add("sync-score", cmd_sync_score, "how well mouth motion follows the audio (any engine's output)")
    p.add_argument("video")
    p.add_argument("--audio", help="score against this audio instead of the video's own track")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = add("restore", cmd_restore, "bring an archived video back into outputs/ (janitor.archive)")
    p.add_argument("target", metavar="DATE/USER/STEM", help="e.g. 2026-11-20/alice/promo, or the output's .json path")
    p = add("users", cmd_users, "people and their private folders (access.mode)")
    p.add_argument("action", choices=("add", "remove", "list", "fix-permissions"),
                   help="add: prepare NAME's folders; remove: take NAME's access away, keep the files; list: each "
                        "user's account, folders, bytes kept, pins; fix-permissions: re-apply access.mode")
    p.add_argument("name", nargs="?", metavar="NAME", help="the user folder (fix-permissions: only this user's)")
    p.add_argument("--json", action="store_true", help="list: machine-readable output")
    p = add("demo", cmd_demo, "make a sample pair and take it through the whole daemon")
    p.add_argument("--engine", choices=engines.NAMES, default="builtin")
    p.add_argument("--dir", help="where to put the demo's folders (default: a new temp folder)")
    add("web", cmd_web, "the history page (systemd/lipsyncd-web.service runs it)")
    p = add("web-user", cmd_web_user, "accounts for web.auth: password (hashes in paths.state)")
    p.add_argument("action", choices=("add", "remove", "passwd"))
    p.add_argument("name", help="the person's user folder name")
    p.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"lipsyncd: configuration error: {exc}", file=sys.stderr)
        return Exit.USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
