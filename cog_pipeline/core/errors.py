"""Exceptions shared by every module: each carries a message fit to show a user as is."""

from __future__ import annotations

from cog_pipeline.core.failures import FailureCode


class PipelineError(Exception):
    """The pipeline could not do its job (bad configuration, unreachable S3, ...); message is user-facing."""


class ImageError(Exception):
    """One image could not be converted; ``step`` says where (download, open, cog, validate, verify, jpeg, upload),
    ``code`` what kind of failure it is when the raiser knows (else the batch gives one from the step)."""

    def __init__(self, step: str, message: str, code: FailureCode | None = None):
        super().__init__(message)
        self.step = step
        self.message = message
        self.code = code

    def __str__(self) -> str:
        return f"{self.step}: {self.message}"
