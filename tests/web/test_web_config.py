"""The web.* configuration keys: a mistake names the key, the file and the line."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon import config as configmod


@pytest.mark.parametrize(("text", "key", "why"), [
    ("web:\n  listen: 8787\n", "web.listen", "must be text"),
    ("web:\n  listen: localhost\n", "web.listen", "HOST:PORT"),
    ("web:\n  listen: 127.0.0.1:99999\n", "web.listen", "HOST:PORT"),
    ("web:\n  auth: basic\n", "web.auth", "proxy, password"),
    ("web:\n  trusted_proxies: [127.0.0.1, proxy.lan]\n", "web.trusted_proxies", "'proxy.lan'"),
    ("web:\n  upload_max_mb: 0\n", "web.upload_max_mb", "greater than 0"),
    ("web:\n  admins: [1]\n", "web.admins", "list of text"),
])
def test_bad_web_keys_are_named(tmp_path: Path, text: str, key: str, why: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(configmod.ConfigError) as caught:
        configmod.load(path)
    message = str(caught.value)
    assert f"{path}:2: {key}:" in message and why in message, message


def test_web_keys_are_typed(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("web:\n  listen: '[::1]:9000'\n  trusted_proxies: [10.0.0.0/8]\n  upload_max_mb: 10\n")
    web = configmod.load(path).web
    assert (web.listen, web.trusted_proxies, web.upload_max_mb, web.auth) == ("[::1]:9000", ("10.0.0.0/8",), 10.0,
                                                                               "proxy")
