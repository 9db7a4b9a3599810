"""Checks of the config and the state directory: `config.valid` and `files.*`.

Secrets must not be readable by anyone but the service user: private keys (TLS, CA, DKIM)
0600, `users.sqlite3` (password hashes) not world-readable. Every file belongs to the owner of
the state directory (a `sudo mailstack user add` run as root would otherwise leave files the
service cannot read). The spool and the Maildirs must be writable, and the disk not full.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shlex
import shutil
import stat
import tempfile
from pathlib import Path

from mailstack.base.config import Config, load_config
from mailstack.base.errors import ConfigError
from mailstack.base.paths import StatePaths
from mailstack.base.users import Accounts
from mailstack.checks import Finding, failed, passed, warned

# Below this much free space deliveries start failing soon (a few large messages): fail.
DISK_FAIL_BYTES = 100 * 1024**2
# Below 1 GiB or 5% free, warn while there is still time to act.
DISK_WARN_BYTES = 1024**3
DISK_WARN_FRACTION = 0.05


def check_config(paths: StatePaths) -> tuple[Config | None, Finding]:
    if not paths.config.exists():
        return None, failed(
            "config.valid",
            f"no mailstack deployment in {paths.root} (no mailstack.toml)",
            f"create one with `mailstack --dir {shlex.quote(str(paths.root))} init "
            "--domain DOMAIN --hostname HOSTNAME --ipv4 ADDRESS`, or pass the "
            "right --dir",
        )
    try:
        cfg = load_config(paths.config)
    except ConfigError as exc:
        return None, failed(
            "config.valid",
            exc.message,
            exc.hint or "fix the key, then run `mailstack config validate`",
        )
    return cfg, passed(
        "config.valid",
        f"{paths.config} is valid ({cfg.server.hostname} for {', '.join(cfg.server.domains)})",
    )


def _q(path: Path) -> str:
    return shlex.quote(str(path))


def private_files(cfg: Config, paths: StatePaths, domains: list[str]) -> list[Path]:
    keys = [paths.tls_key, paths.ca_key]
    keys += [paths.srs_secret]  # whoever has it can make our SRS addresses relay for them
    keys += [paths.dkim_key(cfg.dkim.selector, d) for d in domains]
    if paths.dkim_dir.is_dir():  # older selectors' keys are just as secret
        keys += sorted(paths.dkim_dir.glob("*.key"))
    return [p for p in dict.fromkeys(keys) if p.exists()]


def check_files(
    cfg: Config, paths: StatePaths, accounts: Accounts | None, domains: list[str]
) -> list[Finding]:
    return [
        _present(cfg, paths, domains),
        _modes(cfg, paths, domains),
        _owner(paths),
        _disk(paths),
        _writable_dir("files.queue", paths.queue_dir, "the outbound queue"),
        _maildirs(paths, accounts),
    ]


def _present(cfg: Config, paths: StatePaths, domains: list[str]) -> Finding:
    missing: list[tuple[Path, str]] = []
    for path, fix in (
        (paths.tls_cert, "restore it from a backup, or `mailstack tls import`"),
        (paths.tls_key, "restore it from a backup, or `mailstack tls import`"),
        (paths.users_db, "restore it from a backup (it holds the accounts)"),
        (paths.mail_dir, f"mkdir -m 700 {_q(paths.mail_dir)}"),
        (paths.queue_dir, f"mkdir -m 700 {_q(paths.queue_dir)}"),
    ):
        if not path.exists():
            missing.append((path, fix))
    for d in domains:
        key = paths.dkim_key(cfg.dkim.selector, d)
        if not key.exists():
            missing.append(
                (
                    key,
                    "restore it from a backup; a new key (`mailstack init --force`) "
                    "needs its DKIM record republished",
                )
            )
    if not missing:
        return passed("files.present", "certificate, keys, users.sqlite3, mail/ and queue/ exist")
    return failed(
        "files.present",
        "missing: " + ", ".join(str(p) for p, _ in missing),
        "; ".join(f"{p.name}: {fix}" for p, fix in missing),
    )


def _modes(cfg: Config, paths: StatePaths, domains: list[str]) -> Finding:
    too_open: list[tuple[Path, int]] = []
    for key in private_files(cfg, paths, domains):
        mode = stat.S_IMODE(key.stat().st_mode)
        if mode & 0o077:
            too_open.append((key, mode))
    # The account database holds password hashes: the owner (and a group, if the admin wants
    # one) may read it, others never; SQLite's -wal/-shm files hold the same data.
    dbs = [
        p
        for p in (
            paths.users_db,
            paths.users_db.with_name("users.sqlite3-wal"),
            paths.users_db.with_name("users.sqlite3-shm"),
        )
        if p.exists()
    ]
    for db in dbs:
        mode = stat.S_IMODE(db.stat().st_mode)
        if mode & 0o007:
            too_open.append((db, mode))
    if not too_open:
        return passed(
            "files.modes", "private keys are 0600 and users.sqlite3 is not world-readable"
        )
    listing = ", ".join(f"{p} is {m:04o}" for p, m in too_open)
    return failed(
        "files.modes",
        f"secrets readable by others: {listing}",
        "chmod 600 " + " ".join(_q(p) for p, _ in too_open),
    )


def _owner(paths: StatePaths) -> Finding:
    owner = paths.root.stat().st_uid
    foreign: list[Path] = []
    candidates = [
        paths.config,
        paths.users_db,
        paths.tls_dir,
        paths.dkim_dir,
        paths.dns_dir,
        paths.mail_dir,
        paths.queue_dir,
    ]
    for top in (paths.tls_dir, paths.dkim_dir, paths.queue_dir):
        if top.is_dir():
            candidates += sorted(top.iterdir())
    if paths.mail_dir.is_dir():  # domain dirs and each account's Maildir root, not every message
        for domain_dir in sorted(paths.mail_dir.iterdir()):
            candidates.append(domain_dir)
            if domain_dir.is_dir():
                candidates += sorted(domain_dir.iterdir())
    for path in candidates:
        with contextlib.suppress(FileNotFoundError):
            if path.lstat().st_uid != owner:
                foreign.append(path)
    name = _user_name(owner)
    if not foreign:
        return passed("files.owner", f"everything in {paths.root} belongs to {name}")
    shown = ", ".join(str(p) for p in foreign[:5]) + (" ..." if len(foreign) > 5 else "")
    return failed(
        "files.owner",
        f"{len(foreign)} path(s) not owned by {name} (the owner of {paths.root}): {shown}",
        f"chown -R {shlex.quote(name)}: {_q(paths.root)}",
    )


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _disk(paths: StatePaths) -> Finding:
    usage = shutil.disk_usage(paths.root)
    free, total = usage.free, usage.total
    text = f"{_gib(free)} free of {_gib(total)}"
    if free < DISK_FAIL_BYTES:
        return failed(
            "files.disk",
            f"{paths.root}: only {text}; delivery will fail",
            f"free space on the file system of {paths.root} (or move it to a larger "
            "one): mail needs room to arrive",
        )
    if free < DISK_WARN_BYTES or free < total * DISK_WARN_FRACTION:
        return warned(
            "files.disk",
            f"{paths.root}: {text}",
            f"free space on the file system of {paths.root} before it fills up",
        )
    return passed("files.disk", f"{paths.root}: {text}")


def _gib(n: int) -> str:
    return f"{n / 1024**3:.1f} GiB"


def _try_write(directory: Path) -> str | None:
    """Create and remove a file in `directory`; the reason it failed, or None."""
    try:
        fd, name = tempfile.mkstemp(prefix=".mailstack-check-", dir=directory)
    except OSError as exc:
        return exc.strerror or str(exc)
    os.close(fd)
    os.unlink(name)
    return None


def _writable_dir(id_: str, directory: Path, what: str) -> Finding:
    if not directory.is_dir():
        return failed(id_, f"{what} {directory} does not exist", f"mkdir -m 700 {_q(directory)}")
    if (reason := _try_write(directory)) is not None:
        return failed(
            id_,
            f"cannot write to {what} {directory}: {reason}",
            f"make it writable by the service user: chown -R USER: {_q(directory)}",
        )
    return passed(id_, f"{what} {directory} is writable")


def _maildirs(paths: StatePaths, accounts: Accounts | None) -> Finding:
    if accounts is None:
        return _writable_dir("files.maildirs", paths.mail_dir, "the mail directory")
    problems: list[str] = []
    fixes: list[str] = []
    users = accounts.users()
    for user in users:
        root = paths.maildir(user.address)
        absent = [sub for sub in ("cur", "new", "tmp") if not (root / sub).is_dir()]
        if absent:
            problems.append(f"{user.address}: {root} lacks {', '.join(absent)}/")
            fixes.append("mkdir -p -m 700 " + " ".join(_q(root / s) for s in absent))
        elif (reason := _try_write(root / "tmp")) is not None:
            problems.append(f"{user.address}: cannot write to {root / 'tmp'}: {reason}")
            fixes.append(f"chown -R USER: {_q(root)}  # USER: the account serve runs as")
    if problems:
        return failed("files.maildirs", "; ".join(problems), "; ".join(fixes))
    if (reason := _try_write(paths.mail_dir)) is not None:
        return failed(
            "files.maildirs",
            f"cannot write to {paths.mail_dir}: {reason}",
            f"chown -R USER: {_q(paths.mail_dir)}  # USER: the account serve runs as",
        )
    return passed("files.maildirs", f"{len(users)} Maildir(s) present and writable")
