"""All-or-nothing output folders: files are written into a temporary sibling folder that becomes the real one
only when everything succeeded, so a failure leaves no half-written export behind."""

import os
import shutil
from contextlib import contextmanager


@contextmanager
def staged_folder(final: str):
    """Yield the folder to write into. A new or empty ``final`` is built as a hidden sibling and renamed into place
    on success, removed on failure; an existing non-empty ``final`` (the caller allowed overwriting) is written in
    place."""
    final = os.path.abspath(final)
    if os.path.isdir(final) and os.listdir(final):
        yield final
        return
    work = os.path.join(os.path.dirname(final), f".{os.path.basename(final)}.partial-{os.getpid()}")
    os.makedirs(work, exist_ok=True)
    try:
        yield work
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    if os.path.isdir(final):
        os.rmdir(final)  # empty
    os.replace(work, final)


def moved(path: str, work: str, final: str) -> str:
    """Where a file written under ``work`` lives after the folder became ``final``."""
    return os.path.join(os.path.abspath(final), os.path.relpath(path, work)) if path else path
