"""`mailstack share` and `mailstack mailbox`: shared folders and team mailboxes (RFC 4314 ACLs
in Dovecot's dovecot-acl files; mailstack/sharing.py does the work)."""

from __future__ import annotations

import click

from mailstack.clikit import CONTEXT, cli_state, deployment, reporting


def _grant_line(owner: str, folder: str, grantee: str, rights: str) -> str:
    return f"{owner} {folder}: {grantee} has {rights or 'no rights'}"


class _ShareGroup(click.Group):
    """`share FOLDER ...` grants; `share list` / `share revoke` are subcommands. A first
    argument that names no subcommand is a folder: the arguments go to the hidden `grant`."""

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        if args and args[0] not in self.commands:
            return "grant", self.commands["grant"], args
        return super().resolve_command(ctx, args)


@click.group(cls=_ShareGroup, context_settings=CONTEXT)
def share() -> None:
    """Share a folder: mailstack share FOLDER --owner ADDR --with ADDR [--rights LETTERS]."""


@share.command("grant", context_settings=CONTEXT, hidden=True)
@click.argument("folder")
@click.option("--owner", required=True, help="The account the folder belongs to.")
@click.option(
    "--with", "grantee", required=True, help="The account to share with (or anyone/authenticated)."
)
@click.option(
    "--rights",
    default="lrs",
    show_default=True,
    help="RFC 4314 letters: l see, r read, s keep \\Seen, w flags, i add, t/e delete, "
    "k/x create/delete folders, a administer.",
)
def share_grant(folder: str, owner: str, grantee: str, rights: str) -> None:
    """Share FOLDER of --owner with --with."""
    from mailstack import sharing

    with reporting(cli_state().debug), deployment() as dep:
        grant = sharing.share(dep, folder, owner, grantee, rights)
        click.echo(_grant_line(grant.owner, grant.folder, grant.grantee, grant.rights))


@share.command("list", context_settings=CONTEXT)
@click.option("--owner", help="Only this account's folders.")
@click.option("--json", "as_json", is_flag=True)
def share_list(owner: str | None, as_json: bool) -> None:
    """List every folder shared with someone, and the rights given."""
    from mailstack import sharing
    from mailstack.output import print_json, print_table

    with reporting(cli_state().debug), deployment() as dep:
        rows = [
            {"owner": g.owner, "folder": g.folder, "with": g.grantee, "rights": g.rights}
            for g in sharing.grants(dep, owner)
        ]
        if as_json:
            print_json(rows)
        elif rows:
            print_table(["owner", "folder", "with", "rights"], [list(r.values()) for r in rows])
        else:
            click.echo("no shared folders")


@share.command("revoke", context_settings=CONTEXT)
@click.argument("folder")
@click.option("--owner", required=True, help="The account the folder belongs to.")
@click.option("--with", "grantee", required=True, help="The account to take the rights from.")
def share_revoke(folder: str, owner: str, grantee: str) -> None:
    """Take every right --with has on FOLDER of --owner."""
    from mailstack import sharing

    with reporting(cli_state().debug), deployment() as dep:
        grant = sharing.revoke(dep, folder, owner, grantee)
        click.echo(f"{grant.owner} {grant.folder}: {grant.grantee} no longer has {grant.rights}")


@click.group(context_settings=CONTEXT)
def mailbox() -> None:
    """Team mailboxes: one address whose mail every member sees."""


@mailbox.command("add", context_settings=CONTEXT)
@click.argument("address")
@click.option("--members", required=True, help="Comma-separated accounts, e.g. a@x,b@x.")
@click.option("--rights", default="lrswipkxte", show_default=True, help="What members may do.")
def mailbox_add(address: str, members: str, rights: str) -> None:
    """Create a team mailbox ADDRESS shared with --members (nobody logs in as it)."""
    from mailstack import sharing

    people = [m.strip() for m in members.split(",") if m.strip()]
    with reporting(cli_state().debug), deployment() as dep:
        grants = sharing.add_team_mailbox(dep, address, people, rights)
        owner = grants[0].owner
        click.echo(f"added team mailbox {owner}; mail to it is shared with:")
        for person in dict.fromkeys(g.grantee for g in grants):
            click.echo(f"  {person} ({grants[0].rights})")
        folders = ", ".join(dict.fromkeys(g.folder for g in grants))
        click.echo(f"folders shared: {folders}")
