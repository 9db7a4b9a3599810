"""Opening an existing deployment: config, accounts and store, one place for CLI and serve."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mailstack.base.config import Config, load_config
from mailstack.base.errors import ConfigError, HostError
from mailstack.base.paths import StatePaths
from mailstack.base.users import Accounts
from mailstack.delivery.events import EventHub
from mailstack.delivery.maildir import MaildirStore


@dataclass
class Deployment:
    config: Config
    paths: StatePaths
    accounts: Accounts
    store: MaildirStore
    events: EventHub

    @classmethod
    def open(cls, root: Path, *, events: EventHub | None = None) -> Deployment:
        """`events`: the hub the store publishes deliveries to (an SMTP worker passes one that
        forwards them to the main process)."""
        paths = StatePaths(root)
        if not paths.config.exists():
            raise ConfigError(
                f"no mailstack deployment in {root} (no mailstack.toml)",
                hint="create one with `mailstack init`, or pass --dir / set MAILSTACK_DIR",
            )
        config = load_config(paths.config)
        try:
            accounts = Accounts(paths.users_db)
        except Exception as exc:  # sqlite3 errors: unreadable, locked, not a database
            raise HostError(f"cannot open {paths.users_db}: {exc}") from None
        for domain in config.server.domains:  # a domain added to the config by hand is hosted
            accounts.add_domain(domain, exist_ok=True)
        events = events or EventHub()
        store = MaildirStore(
            paths, events, hostname=config.server.hostname, quota_of=accounts.quota_bytes
        )
        return cls(config, paths, accounts, store, events)

    def close(self) -> None:
        self.accounts.close()
