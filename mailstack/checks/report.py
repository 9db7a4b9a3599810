"""Presenting a check report: a table per area with symbols and colours on a terminal (rich),
plain aligned text when piped, or the one JSON object of INTERFACE.md."""

from __future__ import annotations

import json
import sys

from rich.table import Table
from rich.text import Text

from mailstack.checks import Report, Status
from mailstack.output import console

_STYLE = {
    Status.PASS: ("✔", "green"),
    Status.WARN: ("!", "yellow"),
    Status.FAIL: ("✘", "bold red"),
    Status.SKIP: ("-", "dim"),
}
_TITLES = {
    "config": "Configuration",
    "files": "State directory",
    "dns": "DNS",
    "tls": "TLS certificate",
    "smtp": "SMTP (MX)",
    "submission": "Submission",
    "imap": "IMAP",
    "relay": "Open relay",
    "e2e": "End to end",
    "network": "From outside",
}


def print_json(report: Report) -> None:
    sys.stdout.write(json.dumps(report.as_dict(), indent=2) + "\n")


def summary(report: Report) -> str:
    c = report.counts
    parts = [f"{c.get(s, 0)} {s}" for s in ("pass", "warn", "fail", "skip")]
    verdict = "OK" if report.ok else "PROBLEMS FOUND"
    return f"{verdict}: " + ", ".join(parts)


def print_report(report: Report) -> None:
    out = console()
    groups: dict[str, list[tuple[str, str, str, str | None]]] = {}
    for f in report.findings:
        groups.setdefault(f.group, []).append((f.id, str(f.status), f.message, f.fix))
    for group, rows in groups.items():
        title = _TITLES.get(group, group)
        if not out.is_terminal:
            out.print(f"{title}:", markup=False)
            for id_, status, message, fix in rows:
                out.print(f"  {status.upper():4}  {id_:20} {message}", markup=False)
                if fix:
                    out.print(f"  {'':4}  {'':20} fix: {fix}", markup=False)
            out.print()
            continue
        table = Table(title=title, title_justify="left", show_header=False, expand=True)
        table.add_column(width=1)
        table.add_column(no_wrap=True, min_width=20)
        table.add_column(overflow="fold", ratio=1)
        for id_, status, message, fix in rows:
            symbol, style = _STYLE[Status(status)]
            text = Text(message)
            if fix:
                text.append("\nfix: ", style="bold").append(fix, style="cyan")
            table.add_row(Text(symbol, style=style), Text(id_, style=style), text)
        out.print(table)
    line = summary(report)
    if out.is_terminal:
        out.print(Text(line, style="bold green" if report.ok else "bold red"))
    else:
        out.print(line, markup=False)
