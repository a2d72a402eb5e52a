"""Errors a user can fix: reported as one line and exit code 2, never as a traceback."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user (a file, a value, a name). The message says what and how to fix."""

    exit_code = 2


class RunFailed(Exception):
    """A run that started and then failed (its log above says why): one line and exit code 1, no
    traceback of fedloom's own frames on top of the log that already holds the cause."""

    exit_code = 1
