"""PatientImplantPlanner engine: Qt-free logic for patient-specific spinal implant planning.

Every function takes the MRML scene and module logics through a :class:`~.context.PlannerContext`, so the
same code runs inside 3D Slicer (``context_from_slicer()``) and headless on the ``slicer-core`` wheel
(``create_headless_context()``).
"""

__version__ = "0.1.0"

from .core.errors import PlannerError  # noqa: F401
