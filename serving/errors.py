"""Errors raised by the serving layer.

:class:`IndexIntegrityError` names the index folder, the file inside it, what was expected and what was
found, so that an operator can tell a truncated copy from a folder built by another version or model.
:class:`UnknownUserError` / :class:`UnknownItemError` are ``KeyError`` s whose message names the ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


class IndexIntegrityError(ValueError):
    """A serving index folder that is corrupted, truncated, incomplete or inconsistent with its manifest.

    Attributes:
        folder: the index folder.
        file: the file inside it that failed the check (``"manifest.json"``, ``"items.faiss"``, ...).
        expected: what the loader expected (a checksum, a size, a shape, a schema version).
        found: what it found instead.
        hint: a likely cause or remedy, when one is known.
    """

    def __init__(
        self, folder: str | Path, file: str, expected: object, found: object, hint: str | None = None
    ) -> None:
        self.folder = Path(folder)
        self.file = file
        self.expected = expected
        self.found = found
        self.hint = hint
        msg = (
            f"refusing to load serving index {str(self.folder)!r}: {file}: expected {expected}, found {found}"
        )
        if hint:
            msg += f" ({hint})"
        super().__init__(msg)

    def __reduce__(self):  # keep the exception picklable (e.g. across a process pool)
        return (type(self), (self.folder, self.file, self.expected, self.found, self.hint))


class UnknownIdError(KeyError):
    """Ids that the index does not know. ``str(err)`` is a readable sentence (not a quoted repr)."""

    kind = "id"

    def __init__(self, ids: Sequence[str], n_known: int, hint: str | None = None) -> None:
        self.ids = tuple(ids)
        shown = _shown(self.ids)
        plural = "s" if len(self.ids) != 1 else ""
        self.message = f"unknown {self.kind} id{plural}: {shown} (the index knows {n_known} {self.kind}s)"
        if hint:
            self.message += f"; {hint}"
        self.n_known = n_known
        self._hint = hint
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):
        return (type(self), (self.ids, self.n_known, self._hint))


class UnknownUserError(UnknownIdError):
    """A user id that has no precomputed query embedding in the index."""

    kind = "user"


class UnknownItemError(UnknownIdError):
    """An item id that is not in the index's catalogue."""

    kind = "item"


class UnencodableItemError(KeyError):
    """Item ids in the index that the query encoder cannot encode: items added after training
    (:func:`serving.add_items`), which the model has no embedding for. ``str(err)`` names them."""

    def __init__(self, ids: Sequence[str], n_encodable: int) -> None:
        self.ids = tuple(ids)
        self.n_encodable = n_encodable
        self.message = (
            f"item id(s) {_shown(self.ids)} were added to the index after training: the model encodes only the "
            f"{n_encodable} items it was trained with, so a sequence cannot hold them"
        )
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):
        return (type(self), (self.ids, self.n_encodable))


def _shown(ids: tuple[str, ...]) -> str:
    """The first five ids, quoted, and how many more."""
    shown = ", ".join(repr(i) for i in ids[:5])
    return shown + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
