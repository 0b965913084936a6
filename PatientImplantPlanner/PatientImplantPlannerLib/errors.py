"""Errors raised by the engine. Each message names the problem and how to fix it."""


class PlannerError(Exception):
    """Base class: a problem the user can fix (bad input, impossible parameters, refused overwrite)."""

    def __init__(self, problem: str, fix: str = ""):
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem} {fix}".strip())


class InputFileError(PlannerError):
    """A file or folder to read is missing, unreadable or of the wrong kind."""


class NotCTError(PlannerError):
    """The volume does not look like a CT in Hounsfield units."""


class SegmentationError(PlannerError):
    """Bone segmentation cannot be done with these inputs (empty threshold, bad seeds, ROI outside)."""


class OutputExistsError(PlannerError):
    """Writing would overwrite an existing file or fill an existing non-empty folder."""


class GeometryError(PlannerError):
    """A mesh or a planning geometry is degenerate or failed verification."""


class PlanError(PlannerError):
    """Implant plan inputs or parameters are invalid."""
