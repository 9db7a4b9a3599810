"""The real `mailstack serve` with its https listener, for the pages' tests.

A deployment from tests/web/conftest.py's `web_dir` (every listener, https included, on a free
loopback port; no SMTP worker processes), plus an admin in `[web] admins`, a user (both added
with the CLI) and a throttle tight enough to reach in a few attempts. The pages, IMAP and SMTP
run in the one serve process, sharing one login path and throttle, as in production.
"""

from __future__ import annotations

import imaplib
import re
import ssl
from pathlib import Path

from mailstack.base.users import Accounts
from tests.conftest import run_cli
from tests.support.serve import ServeProcess

ADMIN = "admin@example.com"
ADMIN_PASSWORD = "admin password 1"
USER = "alice@example.com"
USER_PASSWORD = "alice password 1"
HOSTNAME = "mail.example.com"


def set_keys(config: Path, **values: str) -> None:
    """Rewrite `key = value` lines that `init` wrote (each key name used here is unique)."""
    text = config.read_text()
    for key, value in values.items():
        text, n = re.subn(rf"(?m)^{key} = .*$", f"{key} = {value}", text)
        assert n == 1, key
    config.write_text(text)


def make_deployment(root: Path) -> None:
    set_keys(
        root / "mailstack.toml",
        admins=f'["{ADMIN}"]',
        free_failures="2",
        lockout_failures="4",
        max_delay_s="1",
        verify_inbound="false",  # no DNS on the test machine: SPF/DKIM lookups would time out
    )
    for address, password in ((ADMIN, ADMIN_PASSWORD), (USER, USER_PASSWORD)):
        done = run_cli(root, "user", "add", address, "--password-stdin", input=password + "\n")
        assert done.returncode == 0, done.stderr


class WebStack:
    """A running serve of `root` (made by make_deployment) and clients for it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.serve = ServeProcess(root)
        self.accounts = Accounts(root / "users.sqlite3")  # to look, as `user list` would

    def __enter__(self) -> WebStack:
        self.serve.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.accounts.close()
        assert self.serve.stop() == 0, "".join(self.serve.log)

    def port(self, service: str) -> int:
        return self.serve.port(service)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port('https')}"

    def client_tls(self) -> ssl.SSLContext:
        """Trusts the deployment's own CA (its certificate names 127.0.0.1 too: `init` adds
        the loopback address when every listener is on it)."""
        return ssl.create_default_context(cafile=str(self.root / "tls/ca.pem"))

    def imap_login(self, address: str, password: str) -> str:
        """Log in over IMAPS; 'OK', or the server's NO text."""
        tls = self.client_tls()
        with imaplib.IMAP4_SSL("127.0.0.1", self.port("imaps"), ssl_context=tls) as imap:
            try:
                imap.login(address, password)
            except imaplib.IMAP4.error as exc:
                return str(exc)
            imap.logout()
            return "OK"
