"""Two pytest plugins that keep the suite honest about its surroundings (registered by conftest.py).

``SystemDependencies``: some tests need Debian packages (chromium for the browser tests, dataset-fashion-mnist for
the second registry dataset). A missing package is a failure naming the package and the command that installs it,
never a quiet skip. Only an explicit opt-out (``MNISTLAB_SYSTEM_DEPS=skip``, which ``make test SYSTEM_DEPS=skip``
sets) skips those tests, and then the run's summary says which layers did not run. ``MNISTLAB_REQUIRE_SYSTEM=1``
(set by ``.ci/run``) overrides the opt-out: in CI a missing system dependency always fails.

``CheckoutGuard``: tests write only under their temporary folders. The checkout is snapshotted when the session
starts and compared when it ends; anything created, removed or modified (a stray ``runs/`` folder) fails the run.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

OPT_OUT_VAR = "MNISTLAB_SYSTEM_DEPS"
REQUIRE_VAR = "MNISTLAB_REQUIRE_SYSTEM"


@dataclass(frozen=True)
class SystemDependency:
    """A layer of the suite that needs a Debian package: the tests carrying ``marker`` need ``path``."""

    marker: str
    layer: str
    path: str
    packages: tuple[str, ...]

    def present(self) -> bool:
        """True when the file or folder the packages provide is there."""
        return Path(self.path).exists()


SYSTEM_DEPENDENCIES = (
    SystemDependency(marker="browser", layer="browser tests", path="/usr/bin/chromium",
                     packages=("chromium", "chromium-driver")),
    SystemDependency(marker="fashion_mnist", layer="Fashion-MNIST test", path="/usr/share/datasets/fashion-mnist",
                     packages=("dataset-fashion-mnist",)),
)


class SystemDependencies:
    """Fail (by default) or skip (on explicit opt-out) the tests whose system dependency is missing."""

    def __init__(self, dependencies: Sequence[SystemDependency], *, opt_out: bool, required: bool) -> None:
        self.dependencies = tuple(dependencies)
        self.skipping = opt_out and not required  # CI's requirement wins over any opt-out
        self.required = required
        self.not_run: dict[SystemDependency, int] = {}
        self.failing: dict[str, SystemDependency] = {}  # test nodeid -> its missing dependency

    @classmethod
    def from_environment(cls, dependencies: Sequence[SystemDependency] = SYSTEM_DEPENDENCIES) -> SystemDependencies:
        """Read the opt-out and CI's requirement from the environment (see the module docstring)."""
        return cls(dependencies, opt_out=os.environ.get(OPT_OUT_VAR, "") == "skip",
                   required=os.environ.get(REQUIRE_VAR, "") == "1")

    def pytest_configure(self, config: pytest.Config) -> None:
        for dep in self.dependencies:
            config.addinivalue_line("markers", f"{dep.marker}: needs {dep.path} (Debian {' '.join(dep.packages)})")

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        missing = [dep for dep in self.dependencies if not dep.present()]
        for item in items:
            for dep in missing:
                if item.get_closest_marker(dep.marker) is None:
                    continue
                if self.skipping:
                    self.not_run[dep] = self.not_run.get(dep, 0) + 1
                    item.add_marker(pytest.mark.skip(
                        reason=f"not run: {dep.layer} ({dep.path} is missing; {OPT_OUT_VAR}=skip)"))
                else:
                    self.failing[item.nodeid] = dep
                break

    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        dep = self.failing.get(item.nodeid)
        if dep is None:
            return
        packages = " ".join(dep.packages)
        why = f"{REQUIRE_VAR}=1: CI runs every layer" if self.required else \
            "or run `make test SYSTEM_DEPS=skip` to leave these tests out"
        pytest.fail(f"{dep.path} is missing: install Debian's {packages} "
                    f"(`sudo apt-get install {packages}`; `make test` does it when it can), {why}", pytrace=False)

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if self.not_run:
            layers = ", ".join(f"{dep.layer} ({count} test{'s' if count != 1 else ''}; no {dep.path})"
                               for dep, count in self.not_run.items())
            terminalreporter.write_line(f"not run: {layers}", yellow=True, bold=True)


# Written by the tools themselves, never by a test: pytest's and hypothesis's caches, bytecode, virtual
# environments (any .venv*), the editable install's metadata, and git's own folder.
IGNORED_NAMES = frozenset({".git", "__pycache__", ".pytest_cache", ".hypothesis", ".ruff_cache", ".mypy_cache"})


def _ignored(name: str) -> bool:
    return name in IGNORED_NAMES or name.startswith(".venv") or name.endswith(".egg-info")


def snapshot(root: Path) -> dict[str, tuple[int, int] | None]:
    """Every path under ``root`` (but the tools' own folders): ``(size, mtime_ns)`` for files, None for folders."""
    found: dict[str, tuple[int, int] | None] = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not _ignored(d)]
        here = Path(folder)
        for name in dirs:
            found[(here / name).relative_to(root).as_posix() + "/"] = None
        for name in files:
            path = here / name
            try:
                info = path.lstat()
            except FileNotFoundError:  # removed while walking
                continue
            found[path.relative_to(root).as_posix()] = (info.st_size, info.st_mtime_ns)
    return found


def changes(before: dict[str, tuple[int, int] | None], after: dict[str, tuple[int, int] | None]) -> list[str]:
    """Human-readable differences between two snapshots: ``+ new``, ``- removed``, ``~ modified``."""
    lines = [f"+ {p}" for p in sorted(after.keys() - before.keys())]
    lines += [f"- {p}" for p in sorted(before.keys() - after.keys())]
    lines += [f"~ {p}" for p in sorted(before.keys() & after.keys()) if before[p] != after[p]]
    return lines


class CheckoutGuard:
    """Fail the session when the tests changed anything in the checkout."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.before: dict[str, tuple[int, int] | None] = {}
        self.found: list[str] = []

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        self.before = snapshot(self.root)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        self.found = changes(self.before, snapshot(self.root))
        if self.found and session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if not self.found:
            return
        shown: Iterable[str] = self.found[:20]
        more = f" (and {len(self.found) - 20} more)" if len(self.found) > 20 else ""
        terminalreporter.write_line(
            f"FAILED: the tests changed the checkout {self.root}{more}; tests must write under tmp_path:",
            red=True, bold=True)
        for line in shown:
            terminalreporter.write_line(f"  {line}", red=True)
