import os

# Before torch is imported: idle OpenMP threads sleep instead of spinning, which keeps
# CPU tests fast when the test process shares the cores with Flower and Ray processes.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def flwr_env(tmp_path_factory):
    """Environment for `flwr run` with a private FLWR_HOME and local SuperLink ports.

    `flwr run` reuses whatever local SuperLink answers on its port, even one started
    from another checkout or virtual environment, whose ClientApps then import that
    environment's code. A private home and ports give the tests a SuperLink of their
    own, started from this interpreter; it is stopped when the session ends.
    """
    http = _free_port()
    env = dict(
        os.environ,
        FLWR_HOME=str(tmp_path_factory.mktemp("flwr-home")),
        FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(http),
        FLWR_LOCAL_CONTROL_API_PORT=str(_free_port()),
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
    )
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    yield env
    subprocess.run(["pkill", "-f", f"flower-superlink.*--port {http}"], check=False)


# CI sets CI=true (.ci/run does). There a skipped test is a test that did not run while
# the summary looks green, e.g. the deployment tests on a machine without nginx: every
# skip becomes a failure that names its reason.
def skips_fail() -> bool:
    return os.environ.get("CI") == "true"


SKIP_IN_CI = "skipped under CI=true, where every selected test must run: {}"


def _skip_reason(longrepr) -> str:
    # A skip's longrepr is (file, line, "Skipped: reason").
    return longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if skips_fail() and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = SKIP_IN_CI.format(_skip_reason(report.longrepr))


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    if skips_fail() and report.skipped:  # a module that skips itself as a whole
        report.outcome = "failed"
        report.longrepr = SKIP_IN_CI.format(_skip_reason(report.longrepr))
