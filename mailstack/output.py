"""Presenting results: rich tables on a terminal, plain aligned text when piped, JSON on request."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from mailstack.dnsrecords import DnsRecord

if TYPE_CHECKING:
    from rich.console import Console

LONG_VALUE = 60  # characters: longer values are printed outside the table on a terminal


def console(stderr: bool = False) -> Console:
    # rich is imported on first output: `serve`, which prints no table, never loads it.
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # Plain text when piped: no colours, no box drawing, no wrapping of long DKIM values.
    return Console(file=stream, highlight=False, soft_wrap=not stream.isatty())


def client_settings(host: str, ports: dict[str, int], user: str) -> list[str]:
    """What a person types into a mail client (`ports`: service -> port; a missing service is
    left out). Used by `user add` and `demo`."""
    lines = []

    def either(tls: str, starttls: str) -> str:
        both = [f"{ports[tls]} (SSL/TLS)"] if tls in ports else []
        both += [f"{ports[starttls]} (STARTTLS)"] if starttls in ports else []
        return " or ".join(both)

    if imap := either("imaps", "imap"):
        lines.append(f"  IMAP      {host} port {imap}")
    if smtp := either("submissions", "submission"):
        lines.append(f"  SMTP out  {host} port {smtp}, with the same login")
    lines.append(f"  user name {user}")
    return lines


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, title: str = "") -> None:
    out = console()
    if not out.is_terminal:
        if title:
            out.print(title)
        widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
        for row in [list(headers), *rows]:
            out.print(
                "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(),
                markup=False,
            )
        return
    from rich.table import Table

    table = Table(title=title or None)
    for h in headers:
        table.add_column(h, overflow="fold")
    for row in rows:
        table.add_row(*row)
    out.print(table)


def print_records(records: list[DnsRecord]) -> None:
    """The records to publish, grouped by who publishes them, each with its reason."""
    out = console()
    groups = (
        ("dns-host", "At your domain's DNS host (registrar or DNS provider)"),
        ("hosting-provider", "At your hosting provider (reverse DNS of your IP addresses)"),
    )
    for where, title in groups:
        recs = [r for r in records if r.where == where]
        if not recs:
            continue
        rows = []
        below: list[DnsRecord] = []
        for r in recs:
            value = r.unsplit or r.value
            if out.is_terminal and len(value) > LONG_VALUE:
                # A table cell would wrap it between box borders, and a copy would pick
                # those up: the value goes below the table, on one line of its own.
                rows.append([r.name, r.type, "(see below)", r.reason])
                below.append(r)
            else:
                rows.append([r.name, r.type, value, r.reason])
        print_table(["name", "type", "value", "why"], rows, title=title)
        for r in below:
            out.print(f"{r.name} {r.type}:", markup=False)
            out.print(r.unsplit or r.value, markup=False, soft_wrap=True, crop=False)
        out.print()
    if any(r.unsplit and r.unsplit != r.value.strip('"') for r in records):
        out.print(
            "TXT values are shown as one string, as DNS web forms expect; zone files "
            "(mailstack dns --format zone) split them into 255-byte strings.",
            markup=False,
        )
