"""pipeline.isolation: which launches get a private network namespace, and entering one (no Ray: cheap).

The real launch (Ray's ports absent from the host's namespace, and the WMHP_RAY_NETNS=0 opt-out) is tested in
tests/test_pipeline_kill.py.
"""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap

import pytest

from pipeline.isolation import isolate_local_ray, why_not_isolated


@pytest.mark.parametrize(("address", "uri", "storage", "reason"), [
    (None, None, None, None),
    ("local", "sqlite:////tmp/r/mlflow.db", "/tmp/r/ray", None),
    (None, "file:///tmp/mlruns", "file:///tmp/ray", None),
    ("auto", None, None, "--address"),
    ("10.0.0.1:6379", None, None, "--address"),
    (None, "/tmp/r/mlruns", None, None),
    (None, "http://127.0.0.1:5000", None, "--tracking-uri http://127.0.0.1:5000 is not a local file"),
    (None, "https://mlflow.example.org", None, "is not a local file"),
    (None, "databricks", None, "is not a local file"),
    (None, "postgresql://db.example.org/mlflow", None, "is not a local file"),
    (None, None, "s3://bucket/ray", "--storage s3://bucket/ray is remote"),
])  # fmt: skip
def test_which_launches_keep_the_host_network(monkeypatch, address, uri, storage, reason) -> None:
    monkeypatch.delenv("WMHP_RAY_NETNS", raising=False)
    found = why_not_isolated(address, uri, storage)
    assert (found is None) if reason is None else (reason in found)
    monkeypatch.setenv("WMHP_RAY_NETNS", "0")
    assert why_not_isolated(address, uri, storage) == ("--address: Ray runs elsewhere" if reason == "--address"
                                                      else "WMHP_RAY_NETNS=0")


def test_a_library_caller_keeps_its_network() -> None:
    err = io.StringIO()
    assert isolate_local_ray(None, None, None, err) is False  # pytest never called own_process()
    assert err.getvalue() == ""


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


LOOPBACK_CHECK = """
    import os, socket
    interfaces = [line.split(":")[0].strip() for line in open("/proc/net/dev").read().splitlines()[2:]]
    server = socket.create_server(("127.0.0.1", 0))
    socket.create_connection(server.getsockname(), timeout=5).close()  # lo is up
    print(interfaces, os.geteuid(), os.getegid())
"""


@pytest.mark.parametrize("user_namespace", [None, True])
def test_the_namespace_has_only_a_working_loopback_and_keeps_the_user(user_namespace) -> None:
    import os

    done = run_python(f"from pipeline.isolation import enter_private_network\n"
                      f"enter_private_network({user_namespace})\n" + textwrap.dedent(LOOPBACK_CHECK))
    if done.returncode != 0 and "Operation not permitted" in done.stderr:
        pytest.skip("this machine allows no new network namespace")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["['lo']", str(os.geteuid()), str(os.getegid())]


def test_a_launch_that_cannot_isolate_says_why_in_one_line_and_goes_on() -> None:
    done = run_python(textwrap.dedent("""
        import threading, time
        from pipeline.isolation import isolate_local_ray, own_process
        own_process()
        threading.Thread(target=time.sleep, args=(5,), daemon=True).start()  # too late: a thread runs
        print(isolate_local_ray(None, None, None))
        print(len(open("/proc/net/dev").read().splitlines()) > 3)  # still the host's interfaces
    """))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True"]
    assert done.stderr.strip().splitlines() == [
        "wmhp: note: local Ray will listen on all network interfaces: no private network namespace "
        "(the process already runs 2 threads)"]
