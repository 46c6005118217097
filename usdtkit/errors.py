"""usdtkit's exception hierarchy.

Every error usdtkit raises on purpose derives from :class:`UsdtkitError`, so a caller (and the CLI) can
tell bad input or a broken environment from a bug.  Messages are one line and name the object and the
reason, e.g. ``/bin/ls: not an ELF file``.
"""
from __future__ import annotations


class UsdtkitError(Exception):
    """Base class of every error usdtkit raises on purpose."""

    exit_code = 1


class UsageError(UsdtkitError):
    """The caller asked for something malformed (bad probe spec, bad filter, hostile name)."""

    exit_code = 2


class ElfError(UsdtkitError):
    """An ELF file is missing, unreadable, truncated or corrupt."""


class TargetError(UsdtkitError):
    """A target (path, library name or PID) cannot be resolved."""


class NoSuchProcess(TargetError):
    """The PID does not exist or vanished while we looked at it."""

    def __init__(self, pid: int, reason: str = "no such process") -> None:
        super().__init__(f"pid {pid}: {reason}")
        self.pid = pid


class ProbeNotFound(UsdtkitError):
    """A probe or function named by the user does not exist in the target."""


class EnvironmentProblem(UsdtkitError):
    """Tracing cannot work here (privileges, bcc, kernel, headers).  Points at ``usdtkit doctor``."""

    def __init__(self, message: str) -> None:
        if "usdtkit doctor" not in message:
            message = f"{message} (run `usdtkit doctor` for details)"
        super().__init__(message)


class UnsafePath(EnvironmentProblem):
    """A cached folder or file that someone other than this user could have made or changed: not used.

    ``reason`` is the one-line explanation without the pointer to ``usdtkit doctor``.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class AttachError(UsdtkitError):
    """The kernel refused to attach a probe or load a program."""


class ProviderError(UsdtkitError):
    """A runtime USDT provider could not be created, loaded or unloaded."""


class ConfigError(UsageError):
    """A configuration file is unreadable, unsafe or says something invalid; the message names the
    file and the line (``exporter.yaml:12: metric pg_commits: unknown field 'lables'``)."""


class InstrumentError(UsdtkitError):
    """Python functions cannot be instrumented here (interpreter too old, a native part missing), or a
    program to run under ``python -m usdtkit.instrument`` cannot be found."""
