"""`mailstack status` against a running, a stopped and a killed `serve`."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from mailstack.base.paths import StatePaths
from tests.conftest import Cli
from tests.support.serve import ServeProcess

SERVICES = {"smtp", "submission", "submissions", "imap", "imaps"}


def test_running_serve(cli: Cli, deployment_dir: Path) -> None:
    with ServeProcess(deployment_dir) as serve:
        assert serve.proc is not None
        result = cli("status", "--json")
        assert result.returncode == 0, result.stderr
        found = json.loads(result.stdout)
        assert found["running"] is True
        assert found["pid"] == serve.proc.pid
        assert {item["service"] for item in found["listeners"]} == SERVICES
        assert all(item["accepting"] for item in found["listeners"])
        ports = {
            item["service"]: int(item["address"].rsplit(":", 1)[1]) for item in found["listeners"]
        }
        assert ports == {s: serve.port(s) for s in SERVICES}
        assert found["workers"] and all(found["workers"].values())  # 2 cores: SMTP workers
        assert found["queue_size"] == 0
        assert 390 < found["certificate_days_left"] < 398  # init's leaf: 397 days
        assert found["last_check"] is None
        assert found["disk_free_bytes"] > 0

        assert cli("check", "--only", "config").returncode == 0
        text = cli("status")
        assert text.returncode == 0
        lines = text.stdout.splitlines()
        assert lines[0].startswith(f"serve      running (pid {serve.proc.pid}, up ")
        assert sum("accepting" in line for line in lines) == 5
        assert any(line.startswith("check      last run ") and "passed" in line for line in lines)
    # Stopped cleanly: the record is gone and status says so.
    assert not StatePaths(deployment_dir).serve_status.exists()
    stopped = cli("status")
    assert stopped.returncode == 1
    assert stopped.stdout.startswith("serve      NOT RUNNING: serve is not running (no run/")


def test_killed_serve_is_not_running(cli: Cli, deployment_dir: Path) -> None:
    serve = ServeProcess(deployment_dir).start()
    assert serve.proc is not None
    pid = serve.proc.pid
    serve.signal(signal.SIGKILL)
    serve.stop()
    assert StatePaths(deployment_dir).serve_status.exists()  # nobody removed it
    result = cli("status", "--json")
    assert result.returncode == 1
    found = json.loads(result.stdout)
    assert found["running"] is False
    assert found["reason"] == f"serve is not running (pid {pid} is gone)"


def test_not_a_deployment(cli: Cli) -> None:
    result = cli("status")
    assert result.returncode == 1
    assert result.stderr.startswith("error: no mailstack deployment in ")
    assert "Traceback" not in result.stderr
