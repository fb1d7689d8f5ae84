"""A command that must fail the way a user's mistake fails: exit status 2 and one line on stderr."""

from __future__ import annotations

from unmask.cli import main


def one_line_error(capsys, argv: list[str]) -> str:
    """Run ``unmask ARGV``; assert it exits 2 with exactly one line on stderr (no traceback); return it."""
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err
