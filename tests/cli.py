"""Running a domain's CLI in a subprocess or in this process, and checking the one-line bad-input contract
(exit code 2)."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any


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


def invoke(app: Any, *args: str) -> Any:
    """The Typer `app` in this process (no interpreter start-up), for quick error paths: .exit_code, .stderr."""
    from typer.testing import CliRunner

    return CliRunner().invoke(app, list(args))


def assert_user_error(result: Any, *needles: str) -> None:
    """The contract for a subprocess result (`returncode`) or an in-process one (`exit_code`)."""
    code = result.returncode if isinstance(result, subprocess.CompletedProcess) else result.exit_code
    assert_one_line_error(code, result.stderr, *needles)
