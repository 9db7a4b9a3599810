"""The error tree every mailstack library function raises; the CLI turns it into one line.

    MailstackError            anything the admin can act on (message + optional hint)
    ├── ConfigError           mailstack.toml is missing, unreadable or invalid (names the key)
    ├── UsageError            a value given on the command line is malformed (exit 2)
    ├── HostError             the host refuses: permissions, port in use, missing certificate
    ├── ExistsError           refusing to overwrite (deployment, user, alias, domain)
    ├── NotFoundError         unknown user, alias, domain, queue id
    └── ProblemsFoundError    `check` ran and something failed

Library code raises these and never exits; only `mailstack.cli` maps them to exit codes.
"""

from __future__ import annotations


class MailstackError(Exception):
    """An error with a message for the admin and, where we know one, a hint how to fix it."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class ConfigError(MailstackError):
    """The configuration is invalid; the message names the file and the key."""


class UsageError(MailstackError):
    """A command-line value is malformed (exit status 2, as click's own usage errors)."""

    exit_code = 2


class HostError(MailstackError):
    """The host environment refuses: permissions, a port in use, a missing certificate."""


class ExistsError(MailstackError):
    """Refusing to create something that already exists."""


class NotFoundError(MailstackError):
    """The named user, alias, domain or queue entry does not exist."""


class ProblemsFoundError(MailstackError):
    """`mailstack check` found failures (already reported in its output)."""
