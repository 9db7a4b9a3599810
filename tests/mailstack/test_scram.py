"""SCRAM-SHA-256 below the protocols: mailstack/base/scram.py (RFC 7677's test vector, refusals,
any input gives an answer or a ScramError), the keys users.sqlite3 keeps for every way a
password is set, and `ScramLogin` on the one login path (same throttle, same log lines)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import logging
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import scramp
from hypothesis import given
from hypothesis import strategies as st

from mailstack.base import scram
from mailstack.base.config import AuthConfig
from mailstack.base.login import LoginResult, Logins, Outcome, ScramLogin
from mailstack.base.throttle import Kind, LoginThrottle
from mailstack.base.users import Accounts
from tests.conftest import Cli

ALICE, PASSWORD = "alice@example.test", "correct horse"

# RFC 7677 §3, the example exchange (user "user", password "pencil").
VECTOR_SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
CLIENT_FIRST = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
SERVER_NONCE = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
SERVER_FIRST = (
    b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
)
CLIENT_FINAL = (
    b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
)
SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


VECTOR_KEYS = scram.make_keys("pencil", salt=VECTOR_SALT)  # once: PBKDF2 is slow by design


def vector_keys() -> scram.ScramKeys:
    return VECTOR_KEYS


def test_rfc7677_example_exchange() -> None:
    exchange = scram.ScramExchange(CLIENT_FIRST)
    assert exchange.username == "user"
    assert exchange.server_first(vector_keys(), nonce=SERVER_NONCE) == SERVER_FIRST
    assert exchange.finish(CLIENT_FINAL) == SERVER_FINAL


@pytest.mark.parametrize(
    "final",
    [
        pytest.param(CLIENT_FINAL.replace(b"p=dHzb", b"p=dHzc"), id="tampered-proof"),
        pytest.param(CLIENT_FINAL.replace(b"$k0,", b"$k1,"), id="other-nonce"),
        pytest.param(CLIENT_FINAL.replace(b"c=biws", b"c=eSws"), id="binding-flag-changed"),
        pytest.param(b"c=biws,r=x,p=", id="malformed"),
        pytest.param(b"\xff", id="not-utf8"),
    ],
)
def test_a_wrong_final_message_is_a_failed_login(final: bytes) -> None:
    exchange = scram.ScramExchange(CLIENT_FIRST)
    exchange.server_first(vector_keys(), nonce=SERVER_NONCE)
    assert exchange.finish(final) is None
    assert exchange.server_final is None


def test_wrong_password_fails_with_a_real_client() -> None:
    keys = scram.make_keys("pencil")
    client = scramp.ScramClient([scram.MECHANISM], "user", "pen")
    exchange = scram.ScramExchange(client.get_client_first().encode())
    client.set_server_first(exchange.server_first(keys).decode())
    assert exchange.finish(client.get_client_final().encode()) is None


def _proof_client(user: str, password: str, authzid: str) -> tuple[bytes, Callable[[bytes], bytes]]:
    """RFC 5802 §3 from the client's side, written out (scramp's client sends no authzid):
    the first message, and a function from our server-first to the final message."""
    gs2 = f"n,a={authzid},"
    bare = f"n={user},r=clientnonce123"

    def final(server_first: bytes) -> bytes:
        fields = dict(f.split("=", 1) for f in server_first.decode().split(","))
        salted = hashlib.pbkdf2_hmac(
            "sha256", password.encode(), base64.b64decode(fields["s"]), int(fields["i"])
        )
        client_key = hmac.digest(salted, b"Client Key", "sha256")
        without_proof = f"c={base64.b64encode(gs2.encode()).decode()},r={fields['r']}"
        auth = f"{bare},{server_first.decode()},{without_proof}".encode()
        signature = hmac.digest(hashlib.sha256(client_key).digest(), auth, "sha256")
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()

    return (gs2 + bare).encode(), final


def test_an_authzid_naming_the_user_itself_logs_in() -> None:
    # What mutt/neomutt send through GNU SASL; PLAIN allows the same (case-insensitively).
    keys = scram.make_keys("pencil")
    first, final = _proof_client("alice@example.test", "pencil", "Alice@Example.test")
    exchange = scram.ScramExchange(first)
    assert exchange.username == "alice@example.test"
    server_first = exchange.server_first(keys)
    answer = exchange.finish(final(server_first))
    assert answer is not None and answer.startswith(b"v=")
    # ... and the same exchange with a wrong password is a failed login, not an error.
    first, final = _proof_client("alice@example.test", "pen", "alice@example.test")
    exchange = scram.ScramExchange(first)
    assert exchange.finish(final(exchange.server_first(keys))) is None


@pytest.mark.parametrize(
    ("first", "error"),
    [
        pytest.param(b"p=tls-server-end-point,,n=u,r=abc", scram.ScramBindingError, id="wants-cb"),
        pytest.param(b"p=tls-exporter,,n=u,r=abc", scram.ScramBindingError, id="wants-exporter"),
        pytest.param(b"n,a=bob@example.test,n=u,r=abc", scram.ScramProxyError, id="authzid"),
        pytest.param(b"n,,n=u,r=abc,m=ext", scram.ScramSyntaxError, id="mandatory-extension"),
        pytest.param(b"x,,n=u,r=abc", scram.ScramSyntaxError, id="bad-gs2-flag"),
        pytest.param(b"n,,r=abc", scram.ScramSyntaxError, id="no-user"),
        pytest.param(b"n,,n=a=3Eb,r=abc", scram.ScramSyntaxError, id="bad-escape"),
        pytest.param(b"n,,n=\xc3,r=abc", scram.ScramSyntaxError, id="not-utf8"),
        pytest.param(b"n,,n=u,r=" + b"a" * 5000, scram.ScramSyntaxError, id="too-long"),
        pytest.param(b"", scram.ScramSyntaxError, id="empty"),
    ],
)
def test_refused_first_messages(first: bytes, error: type[scram.ScramError]) -> None:
    with pytest.raises(error):
        scram.ScramExchange(first)


def test_a_client_that_could_bind_but_thinks_we_cannot_is_right() -> None:
    # RFC 5802 §6: "y" is correct when the server offers no -PLUS mechanism, as we do.
    assert scram.ScramExchange(b"y,,n=user,r=abc").username == "user"


def test_username_escapes_are_decoded() -> None:
    assert (
        scram.ScramExchange(b"n,,n=a=2Cb=3Dc@example.test,r=abc").username == "a,b=c@example.test"
    )


@given(st.binary(max_size=300), st.binary(max_size=300))
def test_any_bytes_give_an_answer_or_a_scram_error(first: bytes, final: bytes) -> None:
    with contextlib.suppress(scram.ScramError):  # anything else is a bug
        exchange = scram.ScramExchange(first)
        exchange.server_first(vector_keys())
        assert exchange.finish(final) is None  # no proof forged by chance


@given(st.text(max_size=60), st.text(max_size=200))
def test_any_text_after_a_valid_start(user: str, final: str) -> None:
    with contextlib.suppress(scram.ScramError):
        exchange = scram.ScramExchange(f"n,,n={user},r=abc".encode())
        exchange.server_first(vector_keys())
        assert exchange.finish(final.encode()) is None


def test_keys_text_round_trip_and_refusals() -> None:
    keys = scram.make_keys(PASSWORD)
    text = keys.to_text()
    assert text.startswith("SCRAM-SHA-256$4096:")
    assert scram.ScramKeys.from_text(text) == keys
    assert PASSWORD not in text and PASSWORD not in repr(keys)
    for bad in ("", "SCRAM-SHA-1$4096:a$b:c", text.replace("$4096:", "$1000:"), text + "$"):
        with pytest.raises(ValueError, match="RFC 5803"):
            scram.ScramKeys.from_text(bad)


def test_decoy_keys_are_stable_per_name_and_differ_between_names() -> None:
    secret = b"k" * 32
    assert scram.decoy_keys("a@x", secret) == scram.decoy_keys("a@x", secret)
    assert scram.decoy_keys("a@x", secret).salt != scram.decoy_keys("b@x", secret).salt


# -- keys in users.sqlite3 -------------------------------------------------------------------------


@pytest.fixture
def accounts(tmp_path: Path) -> Iterator[Accounts]:
    db = Accounts(tmp_path / "users.sqlite3")
    db.add_domain("example.test")
    db.add_user(ALICE, PASSWORD)
    yield db
    db.close()


def proves(keys: scram.ScramKeys | None, password: str) -> bool:
    return proves_for(keys, ALICE, password)


def proves_for(keys: scram.ScramKeys | None, user: str, password: str) -> bool:
    """Does a real client knowing `password` get in against `keys`?"""
    assert keys is not None
    client = scramp.ScramClient([scram.MECHANISM], user, password)
    exchange = scram.ScramExchange(client.get_client_first().encode())
    client.set_server_first(exchange.server_first(keys).decode())
    return exchange.finish(client.get_client_final().encode()) is not None


def column(accounts: Accounts, address: str = ALICE) -> str | None:
    with sqlite3.connect(accounts.path) as db:
        row = db.execute("SELECT scram FROM users WHERE address=?", (address,)).fetchone()
    return None if row[0] is None else str(row[0])


def test_user_add_and_passwd_store_keys_never_the_password(accounts: Accounts) -> None:
    stored = column(accounts)
    assert stored is not None and PASSWORD not in stored
    keys = accounts.scram_keys(ALICE)
    assert keys is not None and keys.iterations >= 4096
    # StoredKey = H(HMAC(SaltedPassword, "Client Key")) (RFC 5802 §3): derived, not the secret.
    salted = hashlib.pbkdf2_hmac("sha256", PASSWORD.encode(), keys.salt, keys.iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    assert keys.stored_key == hashlib.sha256(client_key).digest()
    assert proves(keys, PASSWORD) and not proves(keys, "wrong")
    accounts.set_password(ALICE, "new secret")
    assert proves(accounts.scram_keys(ALICE), "new secret")
    assert not proves(accounts.scram_keys(ALICE), PASSWORD)


def test_disabled_or_unknown_accounts_have_no_keys(accounts: Accounts) -> None:
    assert accounts.scram_keys("nobody@example.test") is None
    accounts.set_enabled(ALICE, False)
    assert accounts.scram_keys(ALICE) is None


def test_an_old_database_gets_the_column_and_keys_at_the_next_plain_login(tmp_path: Path) -> None:
    path = tmp_path / "users.sqlite3"
    old = Accounts(path)
    old.add_domain("example.test")
    old.add_user(ALICE, PASSWORD)
    old.close()
    with sqlite3.connect(path) as db:  # as a database made before SCRAM existed
        db.execute("ALTER TABLE users DROP COLUMN scram")
    accounts = Accounts(path)  # adds the column back, empty
    try:
        assert column(accounts) is None and accounts.scram_keys(ALICE) is None
        stamp = accounts.credential_stamp(ALICE)
        assert accounts.authenticate(ALICE, "wrong") is None
        assert accounts.scram_keys(ALICE) is None  # a wrong password derives nothing
        assert accounts.authenticate(ALICE, PASSWORD) == ALICE
        assert proves(accounts.scram_keys(ALICE), PASSWORD)
        assert accounts.credential_stamp(ALICE) == stamp  # web sessions survive it
    finally:
        accounts.close()


# -- ScramLogin on the one login path ------------------------------------------------------------


def make_logins(accounts: Accounts, **throttle: int) -> Logins:
    return Logins(accounts, AuthConfig(), LoginThrottle(**throttle))


async def scram_login(logins: Logins, user: str, password: str, ip: str = "192.0.2.1") -> Outcome:
    client = scramp.ScramClient([scram.MECHANISM], user, password)
    login = ScramLogin(logins, ip)
    started = await login.start(client.get_client_first().encode())
    if isinstance(started, LoginResult):
        return started.outcome
    client.set_server_first(started.decode())
    result = await login.finish(client.get_client_final().encode())
    if result.outcome is Outcome.OK:
        assert login.server_final is not None
        client.set_server_final(login.server_final.decode())  # the client checks our signature
        assert result.address == ALICE
    return result.outcome


async def test_scram_login_outcomes_and_log_lines(
    accounts: Accounts, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mailstack.base.login")
    logins = make_logins(accounts)
    assert await scram_login(logins, "Alice@Example.TEST.", PASSWORD) is Outcome.OK
    assert await scram_login(logins, ALICE, "wrong") is Outcome.FAILED
    assert await scram_login(logins, "nobody@example.test", "x") is Outcome.FAILED
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        f"login {ALICE} from 192.0.2.1 (SCRAM-SHA-256)",
        f"login failed for '{ALICE}' from 192.0.2.1 (SCRAM-SHA-256)",
        "login failed for 'nobody@example.test' from 192.0.2.1 (SCRAM-SHA-256)",
    ]
    assert all(PASSWORD not in line for line in lines)


async def test_scram_and_plain_failures_share_one_throttle_budget(accounts: Accounts) -> None:
    logins = make_logins(accounts, lockout_failures=3, free_failures=10)
    assert await logins.login(ALICE, "wrong", "192.0.2.1") == LoginResult(Outcome.FAILED)
    assert await scram_login(logins, ALICE, "wrong") is Outcome.FAILED
    assert await scram_login(logins, "ALICE@example.test", "wrong") is Outcome.FAILED
    pair = logins.throttle.records[(Kind.PAIR, ALICE, "192.0.2.0/24")]
    assert pair.failures == 3 and pair.in_flight == 0
    # Locked: the right password is not even tried, by either mechanism.
    assert await scram_login(logins, ALICE, PASSWORD) is Outcome.THROTTLED
    assert (await logins.login(ALICE, PASSWORD, "192.0.2.1")).outcome is Outcome.THROTTLED
    assert await scram_login(logins, ALICE, PASSWORD, ip="198.51.100.7") is Outcome.OK


async def test_an_abandoned_exchange_returns_its_slot_uncounted(accounts: Accounts) -> None:
    logins = make_logins(accounts)
    client = scramp.ScramClient([scram.MECHANISM], ALICE, "wrong")
    login = ScramLogin(logins, "192.0.2.1")
    assert isinstance(await login.start(client.get_client_first().encode()), bytes)
    pair = logins.throttle.records[(Kind.PAIR, ALICE, "192.0.2.0/24")]
    assert pair.in_flight == 1
    login.abandon()
    assert pair.in_flight == 0 and pair.failures == 0


async def test_a_refused_first_message_is_not_counted(accounts: Accounts) -> None:
    logins = make_logins(accounts)
    with pytest.raises(scram.ScramBindingError):
        await ScramLogin(logins, "192.0.2.1").start(b"p=tls-unique,,n=alice@example.test,r=a")
    assert not logins.throttle.records


def test_the_cli_doors_write_keys(deployment_dir: Path, cli: Cli) -> None:
    """`user add` and `user passwd` (the installed console script) leave keys that prove."""
    assert (
        cli(
            "user",
            "add",
            ALICE.replace("example.test", "example.com"),
            "--password-stdin",
            input=f"{PASSWORD}\n",
        ).returncode
        == 0
    )
    accounts = Accounts(deployment_dir / "users.sqlite3")
    try:
        address = "alice@example.com"
        assert proves_for(accounts.scram_keys(address), address, PASSWORD)
        assert cli("user", "passwd", address, "--password-stdin", input="n3w pw\n").returncode == 0
        assert proves_for(accounts.scram_keys(address), address, "n3w pw")
        assert not proves_for(accounts.scram_keys(address), address, PASSWORD)
    finally:
        accounts.close()
