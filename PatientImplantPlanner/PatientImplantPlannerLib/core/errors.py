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


class OutputWriteError(PlannerError):
    """The output location cannot be written (permissions, read-only or full disk, a file where a folder goes)."""


def from_os_error(exc: OSError) -> PlannerError:
    """The PlannerError for a file-system failure, naming the path and what the user can do about it."""
    import errno

    where = f" {exc.filename}" if getattr(exc, "filename", None) else ""
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return OutputWriteError(f"The disk is full: could not write{where} ({reason}). Nothing of this run was kept.",
                                "Free space on that disk, or write to another disk with --out.")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return OutputWriteError(f"No permission to write{where} ({reason}). Nothing of this run was kept.",
                                "Choose a folder you can write to with --out, or change the folder's permissions.")
    return OutputWriteError(f"File system error at{where or ' an output path'}: {reason}.",
                            "Check the path and the disk, then run the command again.")
