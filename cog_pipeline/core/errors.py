"""Exceptions shared by every module: each carries a message fit to show a user as is."""


class PipelineError(Exception):
    """The pipeline could not do its job (bad configuration, unreachable S3, ...); message is user-facing."""


class ImageError(Exception):
    """One image could not be converted; ``step`` says where (download, open, cog, validate, verify, jpeg, upload)."""

    def __init__(self, step: str, message: str):
        super().__init__(message)
        self.step = step
        self.message = message

    def __str__(self) -> str:
        return f"{self.step}: {self.message}"
