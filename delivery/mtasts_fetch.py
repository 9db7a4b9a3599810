"""MTA-STS (RFC 8461) lookups: the `_mta-sts` TXT record, the HTTPS policy fetch, the cache.

    PolicyStore(directory).lookup(domain, dns, port=, ca_file=, now=) -> StsLookup
    PolicyStore(directory).refresh_due(dns, port=, ca_file=, now=) -> [domain, ...]

TXT records come through mailstack's resolver (`[dns] resolver`), and so does the address of
`mta-sts.<domain>`: tests and split-horizon setups see the same names for policy and MX. The
fetch is stdlib `http.client` over `ssl`: the queue runs each delivery attempt in a thread
with blocking smtplib, so a blocking client in the same thread is the simple fit (an async
client would need a loop per thread), and it never follows redirects, as RFC 8461 §3.3 asks.

The certificate of `mta-sts.<domain>` must chain to the system CAs or `[outbound] ca_file`
and name that host (RFC 8461 §3.3). Only a 200 with `text/plain` and at most 64 KiB counts.

Cache (RFC 8461 §5.1): one JSON file per domain under `directory` (the queue's spool, so it
survives restarts: a policy that an attacker later hides stays in force for its max_age);
`directory=None` keeps it in memory only. Blocking; thread-safe.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import socket
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

from mailstack.delivery.mtasts import (
    MAX_POLICY_BYTES,
    CachedPolicy,
    Policy,
    StsError,
    needs_fetch,
    parse_policy,
    parse_sts_record,
)
from mailstack.delivery.transport import verified_context

from mailstack.base.dns import DnsClient, DnsTempError
from mailstack.base.fsutil import atomic_write, ensure_dir

log = logging.getLogger(__name__)

FETCH_TIMEOUT_S = 30.0  # RFC 8461 §3.3 suggests "a timeout of 60 seconds or less"
POLICY_PATH = "/.well-known/mta-sts.txt"  # RFC 8461 §3.2


@dataclass(frozen=True, slots=True)
class StsLookup:
    policy: Policy | None
    # RFC 8460 §4.3 result type when a published policy could not be had (TLS-RPT)
    failure: str | None = None
    detail: str = ""


class HttpsConnection(http.client.HTTPSConnection):
    """HTTPS to one address we resolved ourselves, verifying the certificate for `host`."""

    def __init__(self, host: str, address: str, port: int, context: ssl.SSLContext) -> None:
        super().__init__(host, port, timeout=FETCH_TIMEOUT_S, context=context)
        self._address = address
        self._tls = context

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._tls.wrap_socket(sock, server_hostname=self.host)


def fetch_policy(dns: DnsClient, domain: str, *, port: int, ca_file: str) -> bytes:
    """The policy body; StsError (with a TLS-RPT result type in args[1]) when unavailable."""
    host = f"mta-sts.{domain}"
    try:
        addresses = [str(r) for t in ("A", "AAAA") for r in dns.lookup(host, t)]
    except DnsTempError as exc:
        raise StsError(f"{host}: {exc}", "sts-policy-fetch-error") from None
    if not addresses:
        raise StsError(f"{host} has no address", "sts-policy-fetch-error")
    errors: list[str] = []
    for address in addresses:
        conn = HttpsConnection(host, address, port, verified_context(ca_file))
        try:
            conn.request("GET", POLICY_PATH, headers={"Accept": "text/plain"})
            response = conn.getresponse()
            if response.status != 200:  # §3.3: 3xx are not followed; anything else: no policy
                raise StsError(f"{host}: HTTP {response.status}", "sts-policy-fetch-error")
            media = (response.getheader("Content-Type") or "").split(";")[0].strip().lower()
            if media != "text/plain":
                raise StsError(f"{host}: Content-Type {media!r}", "sts-policy-invalid")
            body = response.read(MAX_POLICY_BYTES + 1)
            if len(body) > MAX_POLICY_BYTES:
                raise StsError(
                    f"{host}: policy over {MAX_POLICY_BYTES} bytes", "sts-policy-invalid"
                )
            return body
        except ssl.SSLError as exc:
            raise StsError(f"{host}: certificate: {exc}", "sts-webpki-invalid") from None
        except (OSError, http.client.HTTPException) as exc:
            errors.append(f"{address}: {exc}")
        finally:
            conn.close()
    raise StsError(f"{host}: {'; '.join(errors)}", "sts-policy-fetch-error")


REFRESH_RETRY_S = 3600.0


class PolicyStore:
    """The policy cache and the lookup that fills it."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self._memory: dict[str, CachedPolicy] = {}
        self._lock = threading.Lock()
        # A failed refresh of a fresh policy: not tried again on every delivery for a while
        self._refresh_failed: dict[str, float] = {}

    def _file(self, domain: str) -> Path | None:
        return None if self.directory is None else self.directory / f"{domain}.json"

    def cached(self, domain: str) -> CachedPolicy | None:
        with self._lock:
            if domain in self._memory:
                return self._memory[domain]
        path = self._file(domain)
        if path is None:
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            entry = CachedPolicy(
                data["id"], float(data["fetched_at"]), parse_policy(data["body"].encode())
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("mta-sts: ignoring unreadable cache %s: %s", path, exc)
            return None
        with self._lock:
            self._memory[domain] = entry
        return entry

    def domains(self) -> list[str]:
        """Every domain with a cached policy: in memory, and in the directory (from earlier
        runs: a restart must not forget what to keep fresh)."""
        with self._lock:
            names = set(self._memory)
        if self.directory is not None:
            with contextlib.suppress(OSError):  # no cache directory yet: nothing cached
                names.update(p.stem for p in self.directory.glob("*.json"))
        return sorted(names)

    def refresh_due(self, dns: DnsClient, *, port: int, ca_file: str, now: float) -> list[str]:
        """RFC 8461 §5.1: refresh every unexpired cached policy that is due, whether or not
        mail goes to its domain, so that the policy of a domain we write to once a month does
        not lapse and leave the next message to a downgrade. Each goes through `lookup`
        (a new TXT id, the retry spacing of failed refreshes, the cache file). The domains
        tried, for the log and tests."""
        tried = []
        for domain in self.domains():
            cached = self.cached(domain)
            if cached is None or not cached.is_fresh(now) or not cached.refresh_due(now):
                continue  # expired ones are fetched again when mail needs them
            self.lookup(domain, dns, port=port, ca_file=ca_file, now=now)
            tried.append(domain)
        return tried

    def _store(self, domain: str, entry: CachedPolicy, body: bytes) -> None:
        with self._lock:
            self._memory[domain] = entry
        path = self._file(domain)
        if path is None:
            return
        data = {"id": entry.record_id, "fetched_at": entry.fetched_at, "body": body.decode()}
        with contextlib.suppress(OSError):  # a cache that cannot be written is still in memory
            ensure_dir(path.parent, mode=0o700)
            atomic_write(path, json.dumps(data), mode=0o600)

    def lookup(
        self, domain: str, dns: DnsClient, *, port: int, ca_file: str, now: float
    ) -> StsLookup:
        """The policy in force for `domain` now (RFC 8461 §3.3, §5.1), fetching if needed."""
        cached = self.cached(domain)
        record_id: str | None = None
        try:
            record_id = parse_sts_record(dns.txt(f"_mta-sts.{domain}")).id
        except StsError:
            record_id = None  # §3.1: no (single, valid) record: no new policy to fetch
        except DnsTempError as exc:
            log.info("mta-sts: %s: TXT lookup failed: %s", domain, exc)
        fresh = cached.policy if cached is not None and cached.is_fresh(now) else None
        if not needs_fetch(cached, record_id, now):
            return StsLookup(fresh)
        if record_id is None or (cached is not None and cached.record_id == record_id):
            # only a refresh is due: at most one try per REFRESH_RETRY_S
            with self._lock:
                if now < self._refresh_failed.get(domain, -REFRESH_RETRY_S) + REFRESH_RETRY_S:
                    return StsLookup(fresh)
        stored_id = record_id or (cached.record_id if cached is not None else "")
        try:
            body = fetch_policy(dns, domain, port=port, ca_file=ca_file)
            policy = parse_policy(body)
        except StsError as exc:
            # §5.1: a failed refresh keeps a policy that has not expired yet
            failure = exc.args[1] if len(exc.args) > 1 else "sts-policy-invalid"
            log.info("mta-sts: %s: no policy fetched: %s", domain, exc.args[0])
            with self._lock:
                self._refresh_failed[domain] = now
            return StsLookup(fresh, failure=str(failure), detail=str(exc.args[0]))
        self._store(domain, CachedPolicy(stored_id, now, policy), body)
        log.info(
            "mta-sts: %s: policy id %s, mode %s, mx %s",
            domain,
            record_id,
            policy.mode,
            ", ".join(policy.mx),
        )
        return StsLookup(policy)
