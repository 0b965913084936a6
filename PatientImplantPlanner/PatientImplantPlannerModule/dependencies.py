"""The Python packages the engine needs that Slicer does not bundle, installed on first use after asking."""

import logging

import slicer
from slicer.i18n import tr as _

# Python packages the engine needs that Slicer does not bundle (numpy, scipy, SimpleITK, VTK and Pillow are
# bundled), by import name: manifold3d for exact mesh booleans, the rest for the finite-element check.
REQUIRED_PACKAGES = {"manifold3d": "manifold3d>=3.0", "skfem": "scikit-fem>=10", "wildmeshing": "wildmeshing>=0.4",
                     "pyamg": "pyamg>=5"}


#
# Python dependencies
#


def ensureDependencies() -> bool:
    """Make sure the packages Slicer does not bundle are importable; ask the user before installing them.

    Returns False if a package is missing and the user declined (or in testing mode, where nothing is installed).
    """
    import importlib.util

    missing = [req for name, req in REQUIRED_PACKAGES.items() if importlib.util.find_spec(name) is None]
    if not missing:
        return True
    if slicer.app.testingEnabled():
        logging.warning(f"Testing mode: not installing missing Python packages {missing}")
        return False
    text = _(
        "Patient Implant Planner needs the Python package(s) {packages}: manifold3d for exact mesh operations "
        "(Apache-2.0), and scikit-fem (BSD-3), wildmeshing (fTetWild, MPL-2.0) and pyamg (MIT) for the finite-element "
        "strength check; about 30 MB, downloaded from the Python Package Index.\n\n"
        "Install now? Slicer may be unresponsive for up to a minute."
    ).format(packages=", ".join(missing))
    if not slicer.util.confirmOkCancelDisplay(text, windowTitle=_("Install Python packages")):
        return False
    with slicer.util.WaitCursor():
        slicer.util.pip_install(missing)
    importlib.invalidate_caches()
    return all(importlib.util.find_spec(name) is not None for name in REQUIRED_PACKAGES)
