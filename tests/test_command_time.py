"""benchmarks/command_time.py's reading of ``python -X importtime``: the breakdown RESULTS.md gives for item 2."""

from __future__ import annotations

import sys

from tests.benchtools import ROOT, load_benchmark

sys.path.insert(0, str(ROOT / "benchmarks"))  # the script imports its sibling _common
command_time = load_benchmark("command_time")

# The shape CPython prints: self and cumulative microseconds, then the module indented two spaces per level.
REPORT = """import time: self [us] | cumulative | imported package
import time:       200 |        200 |   torch._C
import time:      1000 |       1300 |     torch.nn
import time:       500 |    1143000 |   torch
import time:       900 |    1174000 | mnistlab.training
import time:        40 |         40 |   asyncio
import time:      6000 |       6100 | json
import time:      1000 |      84000 | matplotlib
unrelated stderr line
"""


def test_import_times_keep_top_level_imports_and_find_named_modules_anywhere() -> None:
    times = command_time._import_times(REPORT)
    # Nested entries (torch, asyncio) are inside their importer's cumulative time, not listed beside it.
    assert times["top_level"] == {"mnistlab.training": 1.174, "matplotlib": 0.084, "json": 0.0061}
    assert list(times["top_level"]) == ["mnistlab.training", "matplotlib", "json"]  # largest first
    assert times["named"] == {"torch": 1.143, "mnistlab.training": 1.174, "matplotlib": 0.084}
