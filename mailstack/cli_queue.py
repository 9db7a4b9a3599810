"""`mailstack queue`: the outbound queue (list, retry now, delete)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from mailstack.clikit import CONTEXT, cli_state, deployment, reporting

if TYPE_CHECKING:
    from mailstack.delivery.queue import OutboundQueue
    from mailstack.deployment import Deployment


# -- queue ---------------------------------------------------------------------------------------


@click.group(context_settings=CONTEXT)
def queue() -> None:
    """The outbound queue: list, retry now, delete.

    A running `serve` notices `flush` and `delete` within a second (they touch queue/wakeup).
    """


def _outbound_queue(dep: Deployment) -> OutboundQueue:
    from mailstack.delivery.queue import OutboundQueue

    return OutboundQueue(dep.config, dep.paths, hosted_domains=dep.accounts.domains)


@queue.command("list", context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of queued messages.")
def queue_list(as_json: bool) -> None:
    """List queued messages and the state of each recipient."""
    import datetime as dt

    from mailstack.output import print_json, print_table

    def when(ts: float) -> str:
        return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")

    with reporting(cli_state().debug), deployment() as dep:
        entries = _outbound_queue(dep).list()
        if as_json:
            print_json([e.as_dict() for e in entries])
            return
        rows = [
            [
                e.id,
                when(e.created),
                e.user,
                e.mail_from or "<>",
                r.address,
                r.status,
                str(r.attempts),
                when(r.next_attempt) if r.status == "pending" else "",
                r.last_reply,
            ]
            for e in entries
            for r in e.recipients
        ]
        print_table(
            [
                "id",
                "queued (UTC)",
                "user",
                "from",
                "to",
                "status",
                "attempts",
                "next (UTC)",
                "last reply",
            ],
            rows,
            title=f"{len(entries)} queued message(s)",
        )


@queue.command("flush", context_settings=CONTEXT)
def queue_flush() -> None:
    """Retry every pending recipient now."""
    with reporting(cli_state().debug), deployment() as dep:
        count = _outbound_queue(dep).flush()
        click.echo(f"{count} pending recipient(s) due now")


@queue.command("delete", context_settings=CONTEXT)
@click.argument("queue_id", metavar="ID")
def queue_delete(queue_id: str) -> None:
    """Remove the message ID from the queue without sending it (no DSN)."""
    with reporting(cli_state().debug), deployment() as dep:
        _outbound_queue(dep).delete(queue_id)
        click.echo(f"deleted {queue_id}")
