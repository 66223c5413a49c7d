"""``python -m lstmx``: its subcommands, help, exit codes, errors and the demo's progress bar."""

from __future__ import annotations

import subprocess
import sys

import pytest


def lstmx(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lstmx", *args], capture_output=True,
                          text=True, timeout=300)


def test_help_lists_the_commands() -> None:
    p = lstmx("--help")
    assert p.returncode == 0, p.stderr
    for command in ("demo", "bench", "info"):
        assert command in p.stdout


@pytest.mark.parametrize("command", ["demo", "bench"])
def test_subcommand_help(command: str) -> None:
    p = lstmx(command, "--help")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("usage:") and "--" in p.stdout


def test_info_is_show_config() -> None:
    import lstmx as lx
    p = lstmx("info")
    assert p.returncode == 0, p.stderr
    facts = dict(line.split(": ", 1) for line in p.stdout.strip().splitlines())
    assert {k.strip(): v for k, v in facts.items()}.keys() == lx.config().keys()
    assert f"version: {lx.__version__}" in p.stdout


@pytest.mark.parametrize("args, message", [
    ((), "usage: lstmx"),  # no command: the help, on stderr
    (("frobnicate",), "invalid choice: 'frobnicate'"),
    (("info", "extra"), "unrecognized arguments: extra"),
    (("demo", "--steps", "0"), "--steps and --threads must be >= 1"),
    (("demo", "--steps", "many"), "invalid int value: 'many'"),
])
def test_errors_exit_with_status_2(args: tuple[str, ...], message: str) -> None:
    p = lstmx(*args)
    assert p.returncode == 2 and message in p.stderr, (p.returncode, p.stderr)


def test_demo_trains_with_a_progress_bar() -> None:
    p = lstmx("demo", "--steps", "40", "--seed", "3")
    assert p.returncode == 0, p.stderr
    assert "final held-out accuracy" in p.stdout
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("[")]
    assert lines[-1].startswith("[####################] 40/40  loss "), p.stderr
    assert len(lines) == 10  # a line every tenth of the run when stderr is not a terminal
    q = lstmx("demo", "--steps", "40", "--seed", "3", "--quiet")
    assert q.returncode == 0 and not q.stderr and q.stdout == p.stdout.splitlines()[-1] + "\n"
