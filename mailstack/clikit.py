"""What every `mailstack` command shares: the error boundary, the state dir, value types.

`reporting()` is the CLI's one boundary (STYLE.md §1): a MailstackError becomes `error: ...`
(+ `hint: ...`) and its exit status; anything else one `internal error:` line, exit 1.
"""

from __future__ import annotations

import contextlib
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import click

from mailstack.base.config import parse_size
from mailstack.base.errors import MailstackError
from mailstack.base.paths import StatePaths

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

# The group's own options, accepted anywhere on the line: admins type
# `mailstack user list --dir X` as often as `mailstack --dir X user list`.
GLOBAL_VALUED = ("--dir",)
GLOBAL_FLAGS = ("--debug",)


def hoist_global_options(args: list[str]) -> list[str]:
    """Move the global options found after the subcommand to the front, keeping their order
    (and everything after a `--` as it is)."""
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            rest.extend(args[i:])
            break
        if arg in GLOBAL_VALUED and i + 1 < len(args):
            front += args[i : i + 2]
            i += 2
            continue
        if arg in GLOBAL_FLAGS or arg.startswith(tuple(f"{o}=" for o in GLOBAL_VALUED)):
            front.append(arg)
        else:
            rest.append(arg)
        i += 1
    return front + rest


class GlobalOptionsGroup(click.Group):
    """The top-level group: its options may also follow the subcommand."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, hoist_global_options(args))


@contextlib.contextmanager
def reporting(debug: bool = False) -> Iterator[None]:
    """The CLI's error boundary: one clear line on stderr, never a traceback (unless --debug)."""
    try:
        yield
    except click.exceptions.Exit:
        raise
    except (click.ClickException, click.Abort):
        raise
    except MailstackError as exc:
        click.echo(f"error: {exc.message}", err=True)
        if exc.hint:
            click.echo(f"hint: {exc.hint}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:
        if debug:
            traceback.print_exc()
        click.echo(
            f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)",
            err=True,
        )
        sys.exit(1)


class Obj:
    def __init__(self, root: Path, debug: bool) -> None:
        self.root = root
        self.debug = debug

    @property
    def paths(self) -> StatePaths:
        return StatePaths(self.root)


def cli_state() -> Obj:
    obj = click.get_current_context().find_object(Obj)
    assert obj is not None  # noqa: S101 - set by the group callback
    return obj


@contextlib.contextmanager
def deployment() -> Iterator[Any]:
    from mailstack.deployment import Deployment

    dep = Deployment.open(cli_state().root)
    try:
        yield dep
    finally:
        dep.close()


def fail_usage(message: str) -> NoReturn:
    raise click.UsageError(message)


class SizeType(click.ParamType):  # type: ignore[type-arg]
    name = "SIZE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_size(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


SIZE = SizeType()
