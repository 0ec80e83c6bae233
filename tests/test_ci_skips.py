"""Under CI=true a skipped test fails (tests/conftest.py), so CI cannot pass having run nothing."""

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

CONFTEST = (Path(__file__).parent / "conftest.py").read_text()
SKIPPING = """
import pytest

def test_runs():
    assert True

@pytest.mark.skipif(True, reason="nginx not on PATH")
def test_needs_a_tool():
    assert True

def test_skips_itself():
    pytest.skip("no model package")
"""
SKIPPING_MODULE = """
import pytest

pytest.importorskip("no_such_module_here")

def test_never_collected():
    assert True
"""


@pytest.mark.parametrize("ci", ["true", ""])
def test_a_skip_fails_under_ci_and_stays_a_skip_elsewhere(pytester, monkeypatch, ci):
    monkeypatch.setenv("CI", ci)
    monkeypatch.delenv("PYTEST_ADDOPTS", raising=False)  # e.g. CI's --junitxml: not for this run
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_skipping=SKIPPING, test_skipping_module=SKIPPING_MODULE)

    result = pytester.runpytest("-p", "no:cacheprovider", "--continue-on-collection-errors")

    if ci:
        # A skipif skips in setup (an error there), pytest.skip in the call (a failure),
        # importorskip at import (a collection error).
        result.assert_outcomes(passed=1, failed=1, errors=2)
        result.stdout.fnmatch_lines(["*every selected test must run*nginx not on PATH*"])
        result.stdout.fnmatch_lines(["*every selected test must run*no model package*"])
        result.stdout.fnmatch_lines(["*every selected test must run*no_such_module_here*"])
    else:
        result.assert_outcomes(passed=1, skipped=3)
