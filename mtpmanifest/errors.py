"""Errors the engine raises, each carrying the process exit code the CLI maps it to.

Exit codes (documented in README): 0 ok, 2 configuration or usage error, 3 bad input checkpoint,
4 verification failed. Messages are one line and name the file, tensor or key at fault.
"""
from __future__ import annotations


class MtpManifestError(Exception):
    exit_code = 1

    def __init__(self, message: str, details: list[str] | None = None):
        super().__init__(message)
        self.details = list(details or [])


class ConfigError(MtpManifestError):
    """Configuration or usage error (bad YAML, unknown preset, two rules claiming one tensor)."""

    exit_code = 2


class BadInputError(MtpManifestError):
    """The input checkpoint or file is malformed or does not match its config."""

    exit_code = 3


class VerificationError(MtpManifestError):
    """The written output does not match the manifest, or its numbers are out of bounds."""

    exit_code = 4
