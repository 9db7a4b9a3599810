"""Which DKIM selector signs for each domain, and the steps of rotating to a new key.

A domain's signing key is `dkim/<selector>.<domain>.key`; `[dkim] selector` names the one
every domain starts with. `mailstack dkim rotate` moves one domain to a new selector in two
steps, so that no message is ever signed with a key receivers cannot find (RFC 6376 §3.6.1:
the verifier fetches the key from `<selector>._domainkey.<domain>`):

1. `begin`: make the new key and remember it as *pending*; signing stays with the old key
   while the admin publishes the new record.
2. `switch` (only once the caller saw the new record in DNS): the new selector signs; the old
   one is *previous* until `retire_after`, because mail signed with it may still be in queues
   and mailboxes and be verified later (M3AAWG's DKIM key rotation practice: keep the old key
   published for at least a few days; GRACE_S).

State: `dkim/selectors.json`, one object per domain that ever rotated; a domain without one
signs with `[dkim] selector`. `signing_selector` is what the queue calls for every message:
it re-reads the file only when its mtime changes, so a rotation done by the CLI applies to
the next message `serve` signs, without a restart.
"""

from __future__ import annotations

import json
import threading
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from mailstack.base.errors import MailstackError
from mailstack.base.fsutil import atomic_write
from mailstack.base.paths import StatePaths

GRACE_S = 7 * 86400  # how long the old key stays published after the switch

_VERSION = 1


@dataclass(frozen=True, slots=True)
class DomainKeys:
    signing: str
    pending: str | None = None  # made by `begin`, not yet seen in DNS
    previous: str | None = None  # signed until the switch; keep it published until...
    retire_after: float | None = None  # ...this Unix time


def state_file(paths: StatePaths) -> Path:
    return paths.dkim_dir / "selectors.json"


def load(paths: StatePaths) -> dict[str, DomainKeys]:
    """Every domain's state; {} when nothing ever rotated. MailstackError if unreadable."""
    path = state_file(paths)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise MailstackError(f"cannot read {path}: {exc}") from None
    try:
        if data["version"] != _VERSION:
            raise ValueError(f"unknown version {data['version']!r}")
        return {str(d): DomainKeys(**v) for d, v in data["domains"].items()}
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise MailstackError(f"{path} is not a DKIM selector state: {exc}") from None


def save(paths: StatePaths, states: dict[str, DomainKeys]) -> None:
    data = {"version": _VERSION, "domains": {d: asdict(k) for d, k in sorted(states.items())}}
    atomic_write(state_file(paths), json.dumps(data, indent=1) + "\n", mode=0o600)


def current(paths: StatePaths, default: str, domain: str) -> DomainKeys:
    return load(paths).get(domain) or DomainKeys(signing=default)


def begin(paths: StatePaths, default: str, domain: str, selector: str) -> DomainKeys:
    """Record `selector` as the domain's pending one (the caller made its key file)."""
    states = load(paths)
    keys = states.get(domain) or DomainKeys(signing=default)
    if selector == keys.signing:
        raise MailstackError(f"selector {selector!r} already signs for {domain}")
    states[domain] = replace(keys, pending=selector)
    save(paths, states)
    return states[domain]


def switch(paths: StatePaths, default: str, domain: str, now: float, grace_s: float) -> DomainKeys:
    """Make the pending selector sign; the old one is kept for `grace_s`."""
    states = load(paths)
    keys = states.get(domain) or DomainKeys(signing=default)
    if keys.pending is None:
        raise MailstackError(f"no rotation in progress for {domain}")
    states[domain] = DomainKeys(
        signing=keys.pending, previous=keys.signing, retire_after=now + grace_s
    )
    save(paths, states)
    return states[domain]


class _Cache:
    """`load` keyed by the file's mtime and size: one stat per signed message."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: dict[Path, tuple[Any, dict[str, DomainKeys]]] = {}

    def get(self, paths: StatePaths) -> dict[str, DomainKeys]:
        path = state_file(paths)
        try:
            st = path.stat()
            stamp: Any = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            return {}
        with self.lock:
            hit = self.seen.get(path)
            if hit is not None and hit[0] == stamp:
                return hit[1]
        states = load(paths)
        with self.lock:
            self.seen[path] = (stamp, states)
        return states


_cache = _Cache()


def signing_selector(paths: StatePaths, default: str, domain: str) -> str:
    """The selector whose key signs `domain`'s mail now."""
    keys = _cache.get(paths).get(domain)
    return keys.signing if keys is not None else default
