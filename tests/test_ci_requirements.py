"""Tests that need a Debian package skip without it, except under CI, where they fail."""

import pytest
from conftest import DEBIAN_PACKAGES
from conftest import pytest_runtest_setup
from conftest import require_debian_package


@pytest.fixture
def missing_chromium(monkeypatch, tmp_path):
    """Chromium is looked for where it is not."""
    path = str(tmp_path / "chromium")
    monkeypatch.setitem(DEBIAN_PACKAGES, "chromium", path)
    return path


class _Item:
    """A test item with `marks`, as far as `pytest_runtest_setup` reads one."""

    def __init__(self, *marks):
        self.marks = [mark.mark for mark in marks]

    def iter_markers(self, name):
        return [mark for mark in self.marks if mark.name == name]


@pytest.mark.parametrize("ci", [None, "", "false", "0"])
def test_outside_ci_a_missing_package_skips(missing_chromium, monkeypatch, ci):
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.skip.Exception) as skipped:
        require_debian_package("chromium")
    assert str(skipped.value) == (
        f"needs Debian's chromium ({missing_chromium}): apt-get install chromium"
    )


@pytest.mark.parametrize("ci", ["true", "1", "True"])
def test_under_ci_a_missing_package_fails(missing_chromium, monkeypatch, ci):
    monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.fail.Exception) as failed:
        require_debian_package("chromium")
    assert str(failed.value) == (
        f"CI: needs Debian's chromium ({missing_chromium}): apt-get install chromium"
    )
    with pytest.raises(pytest.fail.Exception):
        pytest_runtest_setup(_Item(pytest.mark.slow, pytest.mark.needs_debian("chromium")))
    pytest_runtest_setup(_Item(pytest.mark.slow))  # no package needed: nothing happens


def test_an_installed_package_lets_the_test_run(missing_chromium, monkeypatch, tmp_path):
    monkeypatch.setenv("CI", "true")
    (tmp_path / "chromium").write_text("")
    require_debian_package("chromium")
    pytest_runtest_setup(_Item(pytest.mark.needs_debian("chromium")))
