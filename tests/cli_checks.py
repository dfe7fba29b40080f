"""Checks shared by the command line's tests."""

from __future__ import annotations

from typing import Any


def one_line_error(result: Any, *phrases: str) -> None:
    """``result`` (a typer ``CliRunner`` result) is a refusal: exit status 2 and one line,
    ``Error: ...``, holding every one of ``phrases``, and no traceback."""
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    for phrase in phrases:
        assert phrase in lines[0], (phrase, lines[0])
