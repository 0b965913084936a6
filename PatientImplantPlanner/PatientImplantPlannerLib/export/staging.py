"""All-or-nothing output folders: files are written into a temporary sibling folder that becomes the real one
only when everything succeeded, so a failure or an interruption (SIGINT, SIGTERM) leaves no half-written export
behind."""

import os
import shutil
import signal
import threading
from contextlib import contextmanager

INTERRUPT_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM, raised where the program is, so every staged folder and temporary file is removed on the
    way out (they clean up on any BaseException)."""


@contextmanager
def interrupts_raise():
    """Within this block SIGINT and SIGTERM raise ``Interrupted`` (name of the signal as its message). Further
    signals are ignored while that unwinds, so the clean-up itself is not cut short."""
    if threading.current_thread() is not threading.main_thread():  # signal handlers: main thread only
        yield
        return

    def handler(signum, _frame):
        for s in INTERRUPT_SIGNALS:
            signal.signal(s, signal.SIG_IGN)
        raise Interrupted(signal.Signals(signum).name)

    previous = {s: signal.signal(s, handler) for s in INTERRUPT_SIGNALS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextmanager
def staged_folder(final: str):
    """Yield the folder to write into. A new or empty ``final`` is built as a hidden sibling and renamed into place
    on success, removed on failure or interruption; an existing non-empty ``final`` (the caller allowed overwriting)
    is written in place."""
    final = os.path.abspath(final)
    if os.path.isdir(final) and os.listdir(final):
        yield final
        return
    work = os.path.join(os.path.dirname(final), f".{os.path.basename(final)}.partial-{os.getpid()}")
    created = _missing_ancestors(work)
    os.makedirs(work, exist_ok=True)
    try:
        yield work
        if os.path.isdir(final):
            os.rmdir(final)  # empty
        os.replace(work, final)  # one rename: the folder appears complete or not at all
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        for folder in created:  # parents made for it, deepest first, unless something else is in them now
            try:
                os.rmdir(folder)
            except OSError:
                break
        raise


def _missing_ancestors(path: str) -> list:
    missing = []
    parent = os.path.dirname(path)
    while parent and not os.path.exists(parent) and parent != os.path.dirname(parent):
        missing.append(parent)
        parent = os.path.dirname(parent)
    return missing


def moved(path: str, work: str, final: str) -> str:
    """Where a file written under ``work`` lives after the folder became ``final``."""
    return os.path.join(os.path.abspath(final), os.path.relpath(path, work)) if path else path
