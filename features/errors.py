"""Errors raised by the data layer.

Every :class:`DataValidationError` names the file, where in it (a 1-based line, a row, or a column), what
was expected and what was found, so that a user can open the file at the right place and fix it.
"""

from __future__ import annotations

from pathlib import Path


class DataValidationError(ValueError):
    """Raw data (or a prepared folder) that does not have the expected shape.

    Attributes:
        file: the offending file (or folder).
        line: 1-based line number in a text file, when known.
        column: the column (or JSON key / field) concerned, when known.
        expected: what the reader expected there.
        got: what it found (already shortened for display).
    """

    def __init__(
        self,
        file: str | Path,
        expected: str,
        *,
        line: int | None = None,
        row: int | None = None,
        column: str | None = None,
        got: object = None,
        hint: str | None = None,
    ) -> None:
        self.file = str(file)
        self.line = line
        self.row = row
        self.column = column
        self.expected = expected
        self.got = got
        where = [f"{self.file}"]
        if line is not None:
            where.append(f"line {line}")
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column {column!r}")
        msg = ", ".join(where) + f": expected {expected}"
        if got is not None:
            msg += f", got {_short(got)}"
        if hint:
            msg += f" ({hint})"
        super().__init__(msg)


class DataSourceError(RuntimeError):
    """A dataset could not be obtained (download failed, checksum mismatch of a downloaded archive)."""


def _short(value: object, limit: int = 80) -> str:
    """repr() of a value, cut to ``limit`` characters so one bad 10 MB line does not flood the terminal."""
    text = value if isinstance(value, str) and value.startswith("<") else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
