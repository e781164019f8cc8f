"""The harness's own errors: each one is a clear message for the user, shown as one line by run.py.

Every error the harness raises on bad input, bad configuration or a busy run directory derives
from ``HarnessError``. ``run.py`` prints such an error as ``error: <message>`` and exits with
code 2, without a traceback (``HYDRA_FULL_ERROR=1`` shows the traceback). Subclasses keep the
builtin base a caller may already catch (``ValueError``, ``FileNotFoundError``).
"""
from __future__ import annotations

#: the exit code of a run that stopped on a HarnessError
EXIT_CODE = 2


class HarnessError(Exception):
    """An error of the harness's own making whose message tells the user what to fix."""


class ConfigValueError(HarnessError, ValueError):
    """A configuration value that is out of range or of the wrong type; names the key."""


class InputFileError(HarnessError, ValueError):
    """An input file (answers, questions) that cannot be read as text or holds nothing; names the file."""


class MissingFileError(HarnessError, FileNotFoundError):
    """An input file (answers, questions) that does not exist; names the path."""


class NothingToScoreError(HarnessError, ValueError):
    """A run or answers file with no scorable record (empty file, every item skipped)."""


class RunLockedError(HarnessError):
    """Another process is writing the same answers file; names that process."""


class OutputNotWritableError(HarnessError, OSError):
    """The results store or the run folder cannot be written."""


class HubUnreachableError(HarnessError):
    """A model hub id that cannot be fetched (offline, unreachable endpoint, no such repository)."""
