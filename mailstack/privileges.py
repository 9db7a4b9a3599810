"""Running unprivileged: the `mailstack` system user, and commands run as the state dir's owner.

A deployment belongs to one user (`init --system-user` creates `mailstack` and hands it the
state directory; the systemd unit runs `serve` as that user, with CAP_NET_BIND_SERVICE for the
ports below 1024). Root running any other command on such a directory (an admin's `user add`,
the Ansible role) switches to the owner first, so every file, Maildir and queue entry it creates
stays readable and writable by `serve`. `serve` itself, started as root, re-executes as the
owner through setpriv(1), keeping only CAP_NET_BIND_SERVICE, as the unit would.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

from mailstack.base.errors import HostError, UsageError

SYSTEM_USER = "mailstack"
NOLOGIN = "/usr/sbin/nologin"
STATE_DIR_MODE = 0o750  # the owner and its group (e.g. a backup job); nobody else


def ensure_system_user(name: str, home: Path) -> pwd.struct_passwd:
    """The system user `name` (and its group), created with useradd(8) when it is missing."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    if os.geteuid() != 0:
        raise HostError(f"user {name} does not exist", hint="run this as root to create it")
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    argv = [useradd, "--system", "--user-group", "--no-create-home", "--home-dir", str(home)]
    argv += ["--shell", NOLOGIN, "--comment", "mailstack mail server", name]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise HostError(f"cannot create user {name}: {exc.strerror or exc}") from None
    if done.returncode != 0:
        detail = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"
        raise HostError(f"cannot create user {name}: useradd: {detail}")
    return pwd.getpwnam(name)


def deployment_owner(root: Path, system_user: bool) -> tuple[int, int] | None:
    """Who gets the state dir after `init`: mailstack with --system-user (created before init
    writes anything, so a failure leaves nothing behind), else the owner of a directory someone
    prepared for us (the Ansible role makes it first), else nobody (root keeps it)."""
    if system_user:
        if os.geteuid() != 0:
            raise UsageError("--system-user creates a user and hands it the state dir: run as root")
        pw = ensure_system_user(SYSTEM_USER, root)
        return pw.pw_uid, pw.pw_gid
    st = foreign_owner(root)
    return (st.st_uid, st.st_gid) if st is not None else None


def hand_over(root: Path, uid: int, gid: int) -> None:
    """Give the whole state directory to uid:gid (modes stay as init set them; the top 0750)."""
    os.chown(root, uid, gid)
    os.chmod(root, STATE_DIR_MODE)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            os.lchown(os.path.join(dirpath, name), uid, gid)


def foreign_owner(root: Path) -> os.stat_result | None:
    """The state dir's stat when we are root and it belongs to another user, else None."""
    if os.geteuid() != 0:
        return None
    try:
        st = root.stat()
    except OSError:
        return None  # not there yet (init), or unreadable: the command itself will say so
    return st if st.st_uid != 0 else None


def become_owner(root: Path) -> None:
    """Root on another user's state dir: become that user (its groups too) for good."""
    st = foreign_owner(root)
    if st is None:
        return
    try:
        name = pwd.getpwuid(st.st_uid).pw_name
        os.initgroups(name, st.st_gid)
    except KeyError:  # an owner without a passwd entry: no supplementary groups
        os.setgroups([])
    os.setgid(st.st_gid)
    os.setuid(st.st_uid)
    stdlib = os.path.dirname(os.__file__)
    if not os.access(stdlib, os.R_OK | os.X_OK):  # e.g. a Python installed under /root
        raise HostError(
            f"{root} belongs to uid {st.st_uid}, and as that user this Python cannot read its "
            f"standard library ({stdlib})",
            hint="install mailstack with a Python every user can run (e.g. /usr/bin/python3), "
            "or run the command as that user",
        )


def reexec_serve_as_owner(root: Path) -> None:
    """`serve` as root on another user's state dir: exec it again as that user, keeping only
    CAP_NET_BIND_SERVICE (ambient, so the SMTP workers inherit it), like the systemd unit.
    Returns only when there is nothing to do."""
    st = foreign_owner(root)
    if st is None:
        return
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise HostError(
            f"{root} belongs to uid {st.st_uid}: serve would run as that user, but setpriv is "
            "missing",
            hint="install util-linux, or start serve as that user (the systemd unit does)",
        )
    argv = [
        setpriv,
        f"--reuid={st.st_uid}",
        f"--regid={st.st_gid}",
        "--init-groups" if _has_name(st.st_uid) else "--clear-groups",
        "--inh-caps=-all,+net_bind_service",
        "--ambient-caps=-all,+net_bind_service",
        "--bounding-set=-all,+net_bind_service",
        "--",
        *_this_command(),
    ]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(setpriv, argv)  # noqa: S606 - argv, no shell: our own command line again


def _this_command() -> list[str]:
    """argv to run this very command again: the console script, or `python -m mailstack`."""
    script = os.path.abspath(sys.argv[0])
    if os.path.basename(script) == "__main__.py":
        return [sys.executable, "-P", "-m", "mailstack", *sys.argv[1:]]
    return [script, *sys.argv[1:]]


def _has_name(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


def user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True
