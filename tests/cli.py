"""Running a domain's CLI in a subprocess, and checking the one-line bad-input contract (exit code 2)."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from collections.abc import Callable


def run_cli(module: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m <module> args...` with captured text output."""
    # One math thread per subprocess: on a shared 2-core box OpenMP spin-waiting costs more than it gains.
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def cli_of(module: str) -> Callable[..., subprocess.CompletedProcess]:
    """A `cli(*args)` function for one domain's CLI module."""
    return functools.partial(run_cli, module)


def assert_one_line_error(exit_code: int, stderr: str, *needles: str) -> None:
    """Exit code 2, exactly one line on stderr, no traceback, and every needle in that line."""
    assert exit_code == 2, (exit_code, stderr)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def assert_user_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert_one_line_error(result.returncode, result.stderr, *needles)
