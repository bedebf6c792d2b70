"""Run ``python -m mnistlab ARGS...`` as a child under an address-space limit and report the child's peak RSS.

Usage: ``python tests/rss_launcher.py LIMIT_BYTES OUT_FILE -- mnistlab-args...``. The child inherits stdin,
stdout, stderr and the environment, so a test sees exactly what a user would; this process waits for it, writes
its peak RSS in bytes (``getrusage(RUSAGE_CHILDREN).ru_maxrss``, of this one child only) to OUT_FILE and exits
with the child's exit code. A separate launcher process keeps the figure free of other children of the test run.
"""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    """Run the child, record its peak RSS, return its exit code."""
    limit, out_file, separator, *args = argv
    if separator != "--":
        raise SystemExit("usage: rss_launcher.py LIMIT_BYTES OUT_FILE -- mnistlab-args...")
    address_space = int(limit)

    def limit_memory() -> None:  # in the child, before exec: MemoryError instead of the machine swapping
        resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))

    code = subprocess.call([sys.executable, "-m", "mnistlab", *args], preexec_fn=limit_memory)
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
    Path(out_file).write_text(str(peak_kib * 1024))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
