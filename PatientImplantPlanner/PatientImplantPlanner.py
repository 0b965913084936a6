"""Patient Implant Planner: the 3D Slicer GUI of the planner. This is the module file Slicer loads.

It holds the module class and imports the module's other classes, so that Slicer finds ``PatientImplantPlannerWidget``,
``PatientImplantPlannerLogic`` and ``PatientImplantPlannerTest`` in its namespace. Their code is in the package
``PatientImplantPlannerModule`` next to this file, one job per file: parameters.py (the parameter node and its enums),
widget.py (the widget, with the bone segmentation and defect implant panels as mixins in bonepanel.py and
defectpanel.py), logic.py, selftest.py, sampledata.py and dependencies.py.

The GUI only binds controls to a parameter node and calls the engine (``PatientImplantPlannerLib``), which is
Qt-free and also runs headless. Everything worth testing lives in the engine.

The GUI is a stack of panels. Adding a panel means adding, each in its own clearly marked section:
parameter fields in ``PatientImplantPlannerParameterNode``, a ctkCollapsibleButton in the .ui file,
``_setup<Panel>Panel`` / ``_update<Panel>Panel`` / handlers in the widget (or a panel mixin) and the engine calls in
the logic.
"""

import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import ScriptedLoadableModule

from PatientImplantPlannerModule.dependencies import REQUIRED_PACKAGES, ensureDependencies
from PatientImplantPlannerModule.logic import PatientImplantPlannerLogic
from PatientImplantPlannerModule.parameters import (
    EXPORT_PART_FIELDS,
    SCREW_TYPES,
    PatientImplantPlannerParameterNode,
    Placement,
    StrutProfile,
)
from PatientImplantPlannerModule.sampledata import SAMPLE_CATEGORY, SAMPLE_FILE, SAMPLE_NAME, registerSampleData
from PatientImplantPlannerModule.selftest import PatientImplantPlannerTest
from PatientImplantPlannerModule.widget import AUTO_UPDATE_DELAY_MS, PatientImplantPlannerWidget

# What Slicer looks up in this file (the module class and <Module>Widget, <Module>Logic, <Module>Test) and what the
# Python console and the tests use.
__all__ = [
    "AUTO_UPDATE_DELAY_MS",
    "EXPORT_PART_FIELDS",
    "REQUIRED_PACKAGES",
    "SAMPLE_CATEGORY",
    "SAMPLE_FILE",
    "SAMPLE_NAME",
    "SCREW_TYPES",
    "PatientImplantPlanner",
    "PatientImplantPlannerLogic",
    "PatientImplantPlannerParameterNode",
    "PatientImplantPlannerTest",
    "PatientImplantPlannerWidget",
    "Placement",
    "StrutProfile",
    "ensureDependencies",
    "registerSampleData",
]


#
# PatientImplantPlanner
#


class PatientImplantPlanner(ScriptedLoadableModule):
    """Uses ScriptedLoadableModule base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Patient Implant Planner")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Planning")]
        self.parent.dependencies = ["Segmentations", "Markups", "SampleData"]
        self.parent.contributors = ["PatientImplantPlanner developers"]
        self.parent.helpText = _("""
Design patient-specific spinal implants from a CT, inside the Slicer scene: segment the bone, plan the implant along
the spine, and export printable, verified STL files with a design record.
<br><br>
<b>Bone segmentation</b>: choose the CT, adjust the threshold (the slice views preview it live), place at least one
seed point on the bone to keep and, in contrast CT, exclude points on vessels touching the spine; optionally restrict
the work to an ROI. Then export the bone model as a binary STL (LPS by default) with a manifest.
<br><br>
<b>Levels and axis</b>: place one point in the body of the last healthy vertebra above the defect and one in the first
below, name the levels, choose the placement and click <i>Design implant</i>. With a segmentation that has one segment
per vertebra (e.g. from TotalSegmentator, segments named "vertebrae_L1"...) as <i>Vertebra labels</i>, the level names
pick the end vertebrae and the points are optional. The spinal axis (curve), the endplates
(planes) and the screws (lines) appear as markups in the plan's folder: drag them and the implant follows.
<b>Implant</b>, <b>Screws</b>, <b>Variants</b>: strut profile and dimensions, screw type and layout, oversized
variants; changes are applied automatically, and the measurements and screw tables show the result.
<b>Export</b>: every selected printable part, verified, with a manifest and a design record, in a new folder.
See the <a href="https://github.com/PatientImplantPlanner/SlicerPatientImplantPlanner">module documentation</a>.
""")
        self.parent.acknowledgementText = _("""
The bundled sample CT comes from the test fixtures of the TotalSegmentator project (Apache-2.0; dataset CC BY 4.0):
Wasserthal J. et al., "TotalSegmentator: Robust Segmentation of 104 Anatomic Structures in CT Images",
Radiology: Artificial Intelligence 2023, doi:10.1148/ryai.230024.
Mesh booleans use manifold3d (Apache-2.0).
""")

        # Additional initialization step after application startup is complete
        slicer.app.connect("startupCompleted()", registerSampleData)
