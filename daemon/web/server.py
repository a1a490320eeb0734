"""`lipsyncd web`: the Flask app served by gunicorn on web.listen, in the foreground (systemd runs it).

gunicorn rather than Flask's development server: it is a production WSGI server that sends file bodies with
os.sendfile (stream.py relies on that), and its gthread worker serves THREADS requests at once, so a person
streaming a long video does not stall the others. One process: the login rate limit lives in its memory.
"""

from __future__ import annotations

import sys
from typing import Any

from gunicorn.app.base import BaseApplication

from daemon.config import Config
from daemon.names import Exit

THREADS = 16
GRACEFUL_SECONDS = 10


class Server(BaseApplication):
    """gunicorn configured from *options* instead of its command line."""

    def __init__(self, app: Any, options: dict[str, Any]) -> None:
        self.application, self.options = app, options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        return self.application


def options(config: Config) -> dict[str, Any]:
    """gunicorn's settings for web.listen ([::1]:8787 works as HOST:PORT).

    "sendfile" is left unset on purpose: gunicorn treats any value given to it as --no-sendfile."""
    return {"bind": [config.web.listen], "workers": 1, "worker_class": "gthread", "threads": THREADS,
            "timeout": 60, "graceful_timeout": GRACEFUL_SECONDS, "keepalive": 5,
            "accesslog": "-", "errorlog": "-", "loglevel": "info", "proc_name": "lipsyncd-web",
            "forwarded_allow_ips": "", "proxy_allow_ips": "",
            "control_socket_disable": True}  # no $HOME/.gunicorn/gunicorn.ctl: systemd stops and restarts it


def main(config: Config) -> int:
    from daemon.web.app import create_app

    try:
        app = create_app(config)
    except OSError as exc:
        print(f"lipsyncd web: cannot prepare paths.state ({config.paths.state}): {exc.strerror or exc}",
              file=sys.stderr)
        return Exit.USAGE
    Server(app, options(config)).run()
    return Exit.OK
