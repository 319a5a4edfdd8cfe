"""Typed errors a user can act on. Every message names what to fix (file, line, field, input)."""


class ReposeError(Exception):
    """Base class for errors caused by user input or files, as opposed to bugs."""


class InputError(ReposeError, ValueError):
    """A tensor, image or argument has the wrong size, range or value."""


class PoseFormatError(ReposeError, ValueError):
    """A pose file or pose object is malformed. Carries where: file, line and field when known."""

    def __init__(self, message: str, *, file=None, line=None, field=None):
        where = []
        if file is not None:
            where.append(f"file {file}")
        if line is not None:
            where.append(f"line {line}")
        if field is not None:
            where.append(f"field '{field}'")
        super().__init__(f"{message} ({', '.join(where)})" if where else message)
        self.file, self.line, self.field = file, line, field


class EmptyPoseError(InputError):
    """The pose has no person / no confident keypoint where one is required."""


class CheckpointError(ReposeError):
    """A checkpoint is missing, of the wrong kind, mismatched, or unsafe to load."""


class MissingDependencyError(ReposeError, ImportError):
    """An optional dependency needed by this feature is not installed."""
