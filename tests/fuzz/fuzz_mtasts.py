"""atheris fuzz target: MTA-STS parsing (delivery.mtasts.parse_policy, parse_sts_record).

Run: `python tests/fuzz/fuzz_mtasts.py -runs=100000 [corpus_dir]`. Not collected by pytest.
Any bytes must parse or raise StsError; a parsed policy must have a known mode, a max_age
within RFC 8461's limit and lower-case mx patterns that match a host of their own shape.
"""

from __future__ import annotations

import atheris
import harness

with atheris.instrument_imports():
    from mailstack.delivery.mtasts import (
        MAX_AGE_LIMIT_S,
        StsError,
        parse_policy,
        parse_sts_record,
    )

SEEDS = [
    b"version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\nmax_age: 604800\r\n",
    b"version: STSv1\nmode: testing\nmx: a.example\nmax_age: 86400\n",
    b"version: STSv1\nmode: none\nmax_age: 1\n",
    b"v=STSv1; id=20160831085700Z;",
    b"v=STSv1;id=abc;ext=value",
]


def test_one_input(data: bytes) -> None:
    try:
        policy = parse_policy(data)
    except StsError:
        pass
    else:
        assert policy.mode in ("enforce", "testing", "none")
        assert 0 <= policy.max_age_s <= MAX_AGE_LIMIT_S
        for pattern in policy.mx:
            assert pattern == pattern.lower()
            assert policy.allows(pattern.replace("*", "x", 1))
    try:
        record = parse_sts_record(data.split(b"\x00"))
    except StsError:
        return
    assert 1 <= len(record.id) <= 32 and record.id.isalnum()


if __name__ == "__main__":
    harness.run(test_one_input, SEEDS)
