"""Run the `traitloop` command in-process, as a user would type it."""

from __future__ import annotations

import sys


def run_cli(args: list[str], monkeypatch, capsys) -> tuple[int, str]:
    """`traitloop ARGS` -> (exit code, stdout + stderr), with a wide terminal so nothing wraps."""
    code, out, err = run_cli_split(args, monkeypatch, capsys)
    return code, out + err


def run_cli_split(args: list[str], monkeypatch, capsys) -> tuple[int, str, str]:
    """`traitloop ARGS` -> (exit code, stdout, stderr), with a wide terminal so nothing wraps."""
    from traitloop.cli import main

    monkeypatch.setattr(sys, "argv", ["traitloop", *args])
    monkeypatch.setenv("COLUMNS", "200")
    code = 0
    try:
        main()
    except SystemExit as exit_info:
        code = exit_info.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err
