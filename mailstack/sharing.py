"""Shared folders and team mailboxes: what `mailstack share` and `mailstack mailbox` do.

Rights live in the folders' `dovecot-acl` files (delivery/acl.py has the format and the rules),
so they take effect for every reader of the Maildir the moment they are written: our IMAP server
reads them on each access and a Dovecot serving the same Maildir does too. Each write also goes
into the registry of shared folders (delivery/acl_registry.py), where a running `serve` looks
for what to list.

A team mailbox (`support@example.com`) is an account nobody logs in to (disabled, with a random
password nobody is told) whose folders grant its members `TEAM_RIGHTS`. Mail to the address is
delivered to it like to any account. Flags are shared: when one member reads a message, it is
\\Seen for all (the team sees what has been dealt with; Dovecot's default for shared folders
too, without its per-user INDEXPVT option).

After a change it touches the Maildir root of each account whose view changed (the grantee's,
every account's for anyone/authenticated): a running `serve` watches the roots of accounts
with a NOTIFY session (delivery/watch.py), which then tell their clients the folders that
appeared or went (RFC 5465 §5.4).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mailstack.base.errors import ExistsError, NotFoundError, UsageError
from mailstack.base.users import generate_password, normalize_address
from mailstack.delivery import acl
from mailstack.delivery.layout import normalize_folder
from mailstack.delivery.store import InvalidFolderNameError
from mailstack.deployment import Deployment

TEAM_RIGHTS = "lrswipkxte"  # everything but `a`: members cannot change who is a member
GRANTEES = (acl.ANYONE, acl.AUTHENTICATED)


@dataclass(frozen=True, slots=True)
class Grant:
    owner: str
    folder: str
    grantee: str  # an address, "authenticated" or "anyone"
    rights: str


def _account(dep: Deployment, address: str, what: str) -> str:
    user = dep.accounts.get_user(normalize_address(address))
    if user is None:
        raise NotFoundError(f"{what} {address}: no such account", hint="see `mailstack user list`")
    return user.address


def _folder(dep: Deployment, owner: str, folder: str) -> tuple[str, Path]:
    try:
        name = normalize_folder(folder)
    except InvalidFolderNameError as exc:
        raise UsageError(f"folder {folder!r}: {exc}") from None
    directory = acl.folder_dir(dep.paths.maildir(owner), name)
    if not (directory / "cur").is_dir():
        names = ", ".join(n for n, _ in acl.account_folders(dep.paths.maildir(owner)))
        raise NotFoundError(f"{owner} has no folder {folder!r} (it has: {names})")
    return name, directory


def _identifier(dep: Deployment, grantee: str) -> tuple[str, str]:
    """(dovecot-acl identifier, display name) of a grantee."""
    if grantee in GRANTEES:
        return grantee, grantee
    address = _account(dep, grantee, "--with")
    return f"user={address}", address


def share(dep: Deployment, folder: str, owner: str, grantee: str, rights: str) -> Grant:
    """Give `grantee` exactly `rights` on `owner`'s `folder` (replacing what it had)."""
    owner = _account(dep, owner, "--owner")
    letters = acl.parse_rights(rights)
    if not letters:
        raise UsageError("--rights is empty: to take rights away use `mailstack share revoke`")
    identifier, shown = _identifier(dep, grantee)
    if shown == owner:
        raise UsageError(f"{owner} owns {folder!r} already: share it with someone else")
    name, _directory = _folder(dep, owner, folder)
    dep.store.acls.set_rights(owner, name, identifier, letters)
    _touch_views(dep, [shown])
    return Grant(owner, name, shown, letters)


def revoke(dep: Deployment, folder: str, owner: str, grantee: str) -> Grant:
    """Take every right of `grantee` on `owner`'s `folder`."""
    owner = _account(dep, owner, "--owner")
    identifier, shown = _identifier(dep, grantee)
    name, directory = _folder(dep, owner, folder)
    entries = acl.read_acl(directory) or []
    current = next((e for e in entries if e.identifier == identifier), None)
    if current is None:
        raise NotFoundError(f"{shown} has no rights on {owner}'s {name!r}")
    dep.store.acls.set_rights(owner, name, identifier, "")
    _touch_views(dep, [shown])
    return Grant(owner, name, shown, current.rights or "")


def _touch_views(dep: Deployment, grantees: list[str]) -> None:
    """Touch the Maildir roots of the accounts whose shared folders changed (see the module
    docstring). Best effort: a session that misses it sees the change on its next LIST."""
    if any(g in GRANTEES for g in grantees):
        grantees = [user.address for user in dep.accounts.users()]
    acl.touch_views(dep.paths.maildir(address) for address in grantees)


def grants(dep: Deployment, owner: str | None = None) -> list[Grant]:
    """Every right given to someone other than a folder's owner, as the files say: every
    account's folders are looked at, and the registry of shared folders brought in line."""
    wanted = _account(dep, owner, "--owner") if owner else None
    out: list[Grant] = []
    for shared in dep.store.acls.rescan():
        if wanted is not None and shared.owner != wanted:
            continue
        for entry in shared.entries:
            if entry.rights is None or entry.identifier == acl.OWNER:
                continue
            out.append(
                Grant(shared.owner, shared.folder, entry.user or entry.identifier, entry.rights)
            )
    return out


def add_team_mailbox(
    dep: Deployment, address: str, members: list[str], rights: str = TEAM_RIGHTS
) -> list[Grant]:
    """Create a team mailbox: an account nobody logs in to, shared with `members`."""
    if not members:
        raise UsageError("--members: name at least one account, e.g. --members a@example.com")
    letters = acl.parse_rights(rights)
    people = [_account(dep, m, "--members") for m in members]
    address = normalize_address(address)
    if dep.accounts.get_user(address) is not None:
        raise ExistsError(f"{address} exists already: share its folders with `mailstack share`")
    quota = dep.config.default_quota_bytes
    account = dep.accounts.add_user(address, generate_password(), quota_bytes=quota)
    try:
        dep.accounts.set_enabled(account.address, False)  # nobody logs in as the team
        dep.store.create_account(account.address)
    except BaseException:
        dep.accounts.delete_user(account.address)
        raise
    out: list[Grant] = []
    for folder, _directory in acl.account_folders(dep.paths.maildir(account.address)):
        for person in people:
            dep.store.acls.set_rights(account.address, folder, f"user={person}", letters)
            out.append(Grant(account.address, folder, person, letters))
    _touch_views(dep, people)
    return out
