"""Errors for bad user input: one clear line that names the file and the problem."""

from __future__ import annotations


class SciDiTInputError(ValueError):
    """Bad input data or arguments. Entry points print `str(err)` on one line and exit with code 2."""

    def __init__(self, message: str, path: object | None = None):
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)


class DataNotFoundError(SciDiTInputError):
    """A dataset is missing from the data folder; the message says where to get it."""
