"""The README's test command sets everything up itself, and the suite is honest about what it did not run.

Three pieces, each exercised for real: the Makefile's ``system-deps`` step (run with ``make``, with a stand-in
apt-get so nothing is installed), the plugin that fails or (on explicit opt-out) skips tests whose Debian package
is missing, and the guard that fails a session which changed the checkout (both in inner pytest sessions).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.systemdeps import OPT_OUT_VAR, REQUIRE_VAR, CheckoutGuard, SystemDependencies, SystemDependency

CHECKOUT = Path(__file__).resolve().parents[1]
MAKE = shutil.which("make")

needs_make = pytest.mark.skipif(MAKE is None, reason="make is not installed (the README's commands need it)")


def make_system_deps(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``make system-deps`` in the checkout, with the paths it checks moved under ``tmp_path``."""
    assert MAKE is not None
    # Not the outer make's settings: `make test` runs this suite inside make, SYSTEM_DEPS=... included.
    outer = (REQUIRE_VAR, "SYSTEM_DEPS", "MAKEFLAGS", "MFLAGS", "MAKELEVEL")
    environment = {k: v for k, v in os.environ.items() if k not in outer}
    environment.update(env or {})
    argv = [MAKE, "-s", "-C", str(CHECKOUT), "system-deps", f"CHROMIUM={tmp_path / 'bin' / 'chromium'}",
            f"FASHION_MNIST={tmp_path / 'datasets' / 'fashion-mnist'}", *args]
    return subprocess.run(argv, capture_output=True, text=True, env=environment, timeout=60, check=False)


def fake_apt_get(tmp_path: Path, *, installs: bool, succeeds: bool = True) -> Path:
    """A stand-in apt-get that logs its arguments and, on ``install``, creates what the packages provide."""
    script = tmp_path / "apt-get"
    create = (f'mkdir -p "{tmp_path}/bin" "{tmp_path}/datasets/fashion-mnist"; '
              f'printf "#!/bin/sh\\n" > "{tmp_path}/bin/chromium"; chmod +x "{tmp_path}/bin/chromium"')
    script.write_text("#!/bin/sh\n"
                      f'echo "$@" >> "{tmp_path}/apt.log"\n'
                      + (f'[ "$1" = install ] && {{ {create}; }}\n' if installs else "")
                      + ("exit 0\n" if succeeds else 'echo "E: Unable to locate package chromium" >&2; exit 100\n'))
    script.chmod(0o755)
    return script


def provide_everything(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "chromium").write_text("#!/bin/sh\n")
    (tmp_path / "bin" / "chromium").chmod(0o755)
    (tmp_path / "datasets" / "fashion-mnist").mkdir(parents=True)


@needs_make
def test_nothing_to_do_when_the_packages_are_there(tmp_path: Path) -> None:
    provide_everything(tmp_path)
    apt = fake_apt_get(tmp_path, installs=True)
    done = make_system_deps(tmp_path, f"APT_GET={apt}", "APT_AS=root")
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "apt.log").exists()  # apt-get never ran


@needs_make
def test_installs_the_missing_packages_with_apt_as_root(tmp_path: Path) -> None:
    apt = fake_apt_get(tmp_path, installs=True)
    done = make_system_deps(tmp_path, f"APT_GET={apt}", "APT_AS=root")
    assert done.returncode == 0, done.stderr
    calls = (tmp_path / "apt.log").read_text().splitlines()
    assert calls == ["update -qq", "install -y -qq chromium chromium-driver dataset-fashion-mnist"]


@needs_make
def test_installs_only_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "datasets" / "fashion-mnist").mkdir(parents=True)
    apt = fake_apt_get(tmp_path, installs=True)
    done = make_system_deps(tmp_path, f"APT_GET={apt}", "APT_AS=root")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "apt.log").read_text().splitlines()[-1] == "install -y -qq chromium chromium-driver"


@needs_make
def test_without_root_or_sudo_it_stops_with_one_line_naming_packages_and_command(tmp_path: Path) -> None:
    apt = fake_apt_get(tmp_path, installs=True)
    done = make_system_deps(tmp_path, f"APT_GET={apt}", "APT_AS=none")
    assert done.returncode != 0
    ours = [line for line in done.stderr.splitlines() if not re.match(r"make(\[\d+\])?: \*\*\*", line)]
    assert len(ours) == 1, done.stderr
    assert "chromium chromium-driver dataset-fashion-mnist" in ours[0]
    assert "sudo apt-get install chromium chromium-driver dataset-fashion-mnist" in ours[0]
    assert "make test SYSTEM_DEPS=skip" in ours[0]
    assert not (tmp_path / "apt.log").exists()


@needs_make
@pytest.mark.parametrize(("succeeds", "expected"), [(False, "could not install"), (True, "still missing")])
def test_a_failed_install_fails(tmp_path: Path, succeeds: bool, expected: str) -> None:
    apt = fake_apt_get(tmp_path, installs=False, succeeds=succeeds)
    done = make_system_deps(tmp_path, f"APT_GET={apt}", "APT_AS=root")
    assert done.returncode != 0
    assert expected in done.stderr
    if not succeeds:
        assert "Unable to locate package" in done.stderr  # apt's own reason is shown


@needs_make
def test_opt_out_is_explicit_and_ci_refuses_it(tmp_path: Path) -> None:
    apt = fake_apt_get(tmp_path, installs=True)
    skipped = make_system_deps(tmp_path, f"APT_GET={apt}", "APT_AS=root", "SYSTEM_DEPS=skip")
    assert skipped.returncode == 0, skipped.stderr
    assert "will not run" in skipped.stderr
    refused = make_system_deps(tmp_path, f"APT_GET={apt}", "APT_AS=root", "SYSTEM_DEPS=skip",
                               env={REQUIRE_VAR: "1"})
    assert refused.returncode != 0
    assert "MNISTLAB_REQUIRE_SYSTEM=1 refuses SYSTEM_DEPS=skip" in refused.stderr
    assert not (tmp_path / "apt.log").exists()
    bogus = make_system_deps(tmp_path, "SYSTEM_DEPS=maybe")
    assert bogus.returncode != 0 and "use install (the default) or skip" in bogus.stderr


INNER_TESTS = """
import pytest

@pytest.mark.browser
def test_page():
    pass

@pytest.mark.fashion_mnist
def test_fashion():
    pass

def test_plain():
    pass
"""


def inner_dependencies(tmp_path: Path) -> tuple[SystemDependency, SystemDependency]:
    present = tmp_path / "present"
    present.mkdir()
    return (SystemDependency(marker="browser", layer="browser tests", path=str(tmp_path / "no-chromium"),
                             packages=("chromium", "chromium-driver")),
            SystemDependency(marker="fashion_mnist", layer="Fashion-MNIST test", path=str(present),
                             packages=("dataset-fashion-mnist",)))


def test_missing_package_fails_its_tests_by_default(pytester: pytest.Pytester, tmp_path: Path) -> None:
    pytester.makepyfile(INNER_TESTS)
    plugin = SystemDependencies(inner_dependencies(tmp_path), opt_out=False, required=False)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", plugins=[plugin])
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*no-chromium is missing: install Debian's chromium chromium-driver*"
                                 "SYSTEM_DEPS=skip*"])


def test_opt_out_skips_and_the_summary_names_the_layers(pytester: pytest.Pytester, tmp_path: Path) -> None:
    pytester.makepyfile(INNER_TESTS)
    plugin = SystemDependencies(inner_dependencies(tmp_path), opt_out=True, required=False)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-rs", plugins=[plugin])
    result.assert_outcomes(passed=2, skipped=1)
    assert result.ret == 0
    result.stdout.fnmatch_lines([f"not run: browser tests (1 test; no {tmp_path / 'no-chromium'})"])
    result.stdout.fnmatch_lines(["SKIPPED*not run: browser tests*is missing; MNISTLAB_SYSTEM_DEPS=skip*"])


def test_ci_requirement_overrides_the_opt_out(pytester: pytest.Pytester, tmp_path: Path) -> None:
    pytester.makepyfile(INNER_TESTS)
    plugin = SystemDependencies(inner_dependencies(tmp_path), opt_out=True, required=True)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", plugins=[plugin])
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*no-chromium is missing*MNISTLAB_REQUIRE_SYSTEM=1: CI runs every layer*"])


def test_environment_switches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(OPT_OUT_VAR, "skip")
    monkeypatch.delenv(REQUIRE_VAR, raising=False)
    assert SystemDependencies.from_environment().skipping
    monkeypatch.setenv(REQUIRE_VAR, "1")
    assert not SystemDependencies.from_environment().skipping
    monkeypatch.setenv(OPT_OUT_VAR, "install")
    monkeypatch.delenv(REQUIRE_VAR)
    assert not SystemDependencies.from_environment().skipping


def test_this_session_has_both_plugins(pytestconfig: pytest.Config) -> None:
    guard = pytestconfig.pluginmanager.get_plugin("mnistlab-checkout-guard")
    assert isinstance(guard, CheckoutGuard) and guard.root == CHECKOUT
    assert isinstance(pytestconfig.pluginmanager.get_plugin("mnistlab-system-deps"), SystemDependencies)


def test_a_session_that_writes_into_the_checkout_fails(pytester: pytest.Pytester, tmp_path: Path) -> None:
    checkout = tmp_path / "checkout"
    (checkout / "src").mkdir(parents=True)
    (checkout / "src" / "keep.py").write_text("x = 1\n")
    (checkout / "src" / "edit.py").write_text("y = 1\n")
    (checkout / "old.txt").write_text("bye\n")
    pytester.makepyfile(f"""
        from pathlib import Path
        ROOT = Path({str(checkout)!r})

        def test_leaves_an_empty_run_folder():
            (ROOT / "runs" / "train-1").mkdir(parents=True)

        def test_edits_and_removes():
            (ROOT / "src" / "edit.py").write_text("y = 22\\n")
            (ROOT / "old.txt").unlink()

        def test_tool_caches_do_not_count():
            (ROOT / "__pycache__").mkdir()
            (ROOT / "__pycache__" / "x.pyc").write_bytes(b"")
            (ROOT / ".venv-other").mkdir()
    """)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", plugins=[CheckoutGuard(checkout)])
    result.assert_outcomes(passed=3)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["FAILED: the tests changed the checkout*", "  + runs/", "  + runs/train-1/",
                                 "  - old.txt", "  ~ src/edit.py"])
    assert "pycache" not in result.stdout.str() and ".venv-other" not in result.stdout.str()


def test_a_session_that_keeps_to_tmp_path_passes(pytester: pytest.Pytester, tmp_path: Path) -> None:
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (checkout / "a.txt").write_text("a\n")
    pytester.makepyfile("""
        def test_writes_only_its_tmp_path(tmp_path):
            (tmp_path / "runs").mkdir()
    """)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", plugins=[CheckoutGuard(checkout)])
    result.assert_outcomes(passed=1)
    assert result.ret == 0
    assert "changed the checkout" not in result.stdout.str()
