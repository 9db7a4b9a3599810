"""Each account's quota for `MaildirStore` (delivery/maildir.py): its limit, from the account
database through the `quota_of` it was given, and its usage, from `maildirsize`
(delivery/quota.py, which explains the choice).

Once per account and store instance the usage is recounted from the listings: writers that do
not keep maildirsize (Dovecot without its quota plugin, scripts) may have added mail while we
were not running. Afterwards snapshots notice foreign changes. A write is refused only on a
fresh count, never on a stale maildirsize.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from mailstack.delivery import quota
from mailstack.delivery.store import QuotaExceededError


class AccountQuotas:
    """Limits and usage per account root; safe for many threads."""

    def __init__(self, quota_of: Callable[[str], int] | None) -> None:
        # The account database's quota per user (0: unlimited); none given: no quotas.
        self._quota_of = quota_of
        self._verified: set[Path] = set()
        self._lock = threading.Lock()

    def limit(self, user: str) -> int:
        return self._quota_of(user) if self._quota_of is not None else 0

    def usage(self, root: Path, limit: int = 0) -> int:
        """Bytes used by the account at `root` (recounted on the first look; see above)."""
        with self._lock:
            is_verified = root in self._verified
            self._verified.add(root)
        return quota.usage(root, limit) if is_verified else quota.recalculate(root, limit)

    def counted(self, root: Path) -> int | None:
        """The usage maildirsize records, without counting; None before the first recount."""
        with self._lock:
            if root not in self._verified:
                return None
        return quota.counted_usage(root)

    def check(self, user: str, root: Path, adding: int) -> None:
        """Raise QuotaExceededError when `adding` bytes would take `user` over the limit."""
        limit = self.limit(user)
        if limit <= 0 or self.usage(root, limit) + adding <= limit:
            return
        if quota.recalculate(root, limit) + adding > limit:
            raise QuotaExceededError(f"{user}: quota of {limit} bytes exceeded")
