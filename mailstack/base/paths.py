"""The state-directory layout (INTERFACE.md) in one place; nothing else builds these paths."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_DIR = Path("/var/lib/mailstack")
_MAILDIRS_MAX = 10_000  # accounts whose Maildir path StatePaths.maildir keeps


def default_dir() -> Path:
    return Path(os.environ.get("MAILSTACK_DIR") or DEFAULT_DIR)


@dataclass(frozen=True, slots=True)
class StatePaths:
    """Every path under one deployment's state directory."""

    root: Path
    _maildirs: dict[str, Path] = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def config(self) -> Path:
        return self.root / "mailstack.toml"

    @property
    def tls_dir(self) -> Path:
        return self.root / "tls"

    @property
    def tls_cert(self) -> Path:
        return self.tls_dir / "fullchain.pem"

    @property
    def tls_key(self) -> Path:
        return self.tls_dir / "privkey.pem"

    @property
    def ca_cert(self) -> Path:
        return self.tls_dir / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.tls_dir / "ca.key"

    @property
    def acme_dir(self) -> Path:
        """ACME state (`mailstack tls acme`): account key, directory URL, last renewal."""
        return self.root / "acme"

    @property
    def acme_challenges(self) -> Path:
        """HTTP-01 key authorizations by token, which the http listener serves (RFC 8555 §8.3)."""
        return self.acme_dir / "challenges"

    @property
    def acme_account(self) -> Path:
        """The ACME account: directory URL, contact, CA bundle, account key (mode 0600)."""
        return self.acme_dir / "account.json"

    @property
    def acme_state(self) -> Path:
        """The last issuance or renewal attempt, for `status` and `check`."""
        return self.acme_dir / "state.json"

    @property
    def dkim_dir(self) -> Path:
        return self.root / "dkim"

    def dkim_key(self, selector: str, domain: str) -> Path:
        return self.dkim_dir / f"{selector}.{domain}.key"

    @property
    def dns_dir(self) -> Path:
        return self.root / "dns"

    def zone_file(self, zone: str) -> Path:
        return self.dns_dir / f"{zone.rstrip('.')}.zone"

    @property
    def users_db(self) -> Path:
        return self.root / "users.sqlite3"

    @property
    def throttle_db(self) -> Path:
        """Login throttle state (mailstack/base/throttle_db.py)."""
        return self.root / "throttle.sqlite3"

    @property
    def srs_secret(self) -> Path:
        """The SRS signing secrets, one per line, the first signs (smtp/forwarding.py)."""
        return self.root / "srs.secret"

    @property
    def send_limits_db(self) -> Path:
        """What each account sent lately, for the sending limits (smtp/sendlimits.py)."""
        return self.root / "sendlimits.sqlite3"

    @property
    def events_db(self) -> Path:
        """Recent deliveries and rejections of every serve process (mailstack/web/events.py)."""
        return self.root / "events.sqlite3"

    @property
    def web_sessions_db(self) -> Path:
        """Logged-in web sessions, keyed by their token's hash (mailstack/web/session_db.py)."""
        return self.root / "web-sessions.sqlite3"

    @property
    def shares_db(self) -> Path:
        """Who shares which folder with whom, found in the dovecot-acl files
        (delivery/acl_registry.py): a cache of them, safe to delete."""
        return self.root / "shares.sqlite3"

    @property
    def mail_dir(self) -> Path:
        return self.root / "mail"

    def maildir(self, address: str) -> Path:
        """The Maildir++ root of an account: mail/<domain>/<localpart>/. The same Path object
        each time (a Path caches its hash: sessions look accounts up by it on every
        command)."""
        found = self._maildirs.get(address)
        if found is None:
            local, _, domain = address.rpartition("@")
            found = self.mail_dir / domain / local
            if len(self._maildirs) >= _MAILDIRS_MAX:
                self._maildirs.clear()
            self._maildirs[address] = found
        return found

    @property
    def queue_dir(self) -> Path:
        return self.root / "queue"

    @property
    def run_dir(self) -> Path:
        """What a running `serve` and the last `check` leave for `mailstack status`."""
        return self.root / "run"

    @property
    def serve_status(self) -> Path:
        return self.run_dir / "serve.json"

    @property
    def last_check(self) -> Path:
        return self.run_dir / "last-check.json"
