"""The one exception type for user mistakes.

Library code raises `UserError` for anything the user can fix (a missing file, a bad manifest line,
an unknown model name). The CLI prints its message on one line and exits with `exit_code`; every
other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input, reported as one line and a non-zero exit code."""

    exit_code: int = 2

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class CheckpointError(UserError):
    """A checkpoint that is corrupt, truncated, of an unknown format version, or fails its checksum."""

    exit_code = 3
