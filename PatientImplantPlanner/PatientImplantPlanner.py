"""Patient Implant Planner: the 3D Slicer GUI of the planner.

This file only binds GUI controls to a parameter node and calls the engine (``PatientImplantPlannerLib``), which is
Qt-free and also runs headless. Everything worth testing lives in the engine.

The GUI is a stack of panels. Adding a panel means adding, each in its own clearly marked section:
parameter fields in ``PatientImplantPlannerParameterNode``, a ctkCollapsibleButton in the .ui file,
``_setup<Panel>Panel`` / ``_update<Panel>Panel`` / handlers in the widget and the engine calls in the logic.
"""

import contextlib
import enum
import json
import logging
import os
import pathlib
import re
import traceback
from typing import Annotated, Optional

import qt
import slicer
import vtk
from slicer import (
    vtkMRMLMarkupsCurveNode,
    vtkMRMLMarkupsFiducialNode,
    vtkMRMLMarkupsPlaneNode,
    vtkMRMLMarkupsROINode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
)
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import (
    Choice,
    Default,
    FloatRange,
    RangeBounds,
    WithinRange,
    parameterNodeWrapper,
)
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from PatientImplantPlannerLib.core.errors import OutputExistsError, PlanError, PlannerError
from PatientImplantPlannerLib.scene.planeditor import NEEDS_UPDATE, EditedPlan, PlanEditor

SAMPLE_CATEGORY = "PatientImplantPlanner"
SAMPLE_NAME = "PatientImplantPlannerLumbarCT"
SAMPLE_FILE = "example_ct.nii.gz"
# Python packages the engine needs that Slicer does not bundle (numpy, scipy, SimpleITK, VTK and Pillow are
# bundled), by import name: manifold3d for exact mesh booleans, fpdf2 for the PDF design record.
REQUIRED_PACKAGES = {"manifold3d": "manifold3d>=3.0", "fpdf": "fpdf2>=2.7", "skfem": "scikit-fem>=10",
                     "wildmeshing": "wildmeshing>=0.4", "pyamg": "pyamg>=5"}
# Keys of PatientImplantPlannerLib.design.screws.SCREW_CATALOGUE (the engine is not imported at module load; a test
# checks that both lists agree).
SCREW_TYPES = ["3.5 cancellous", "6.5 cancellous"]
# Export part (PatientImplantPlannerLib.export.bundle.ALL_PARTS) -> parameter node field of its checkbox.
EXPORT_PART_FIELDS = {
    "implant": "exportImplant",
    "variants": "exportVariants",
    "lattice": "exportLattice",
    "docking_guides": "exportDockingGuides",
    "drill_guides": "exportDrillGuides",
    "check_model": "exportCheckModel",
    "bone_model": "exportBoneModel",
    "report": "exportReport",
}
# Edits of the plan's markups or settings are applied this long after the last change (one redesign per burst).
AUTO_UPDATE_DELAY_MS = 500


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


#
# Register sample data sets in Sample Data module
#


def registerSampleData():
    """Add the bundled lumbar CT to the Sample Data module.

    The file ships with the extension, so it is "downloaded" from a file:// URI (SampleData copies it into its cache
    with urllib, which reads local files): no network is needed. The checksum makes SampleData replace a stale
    cached copy.
    """
    import SampleData

    moduleDir = os.path.dirname(__file__)
    iconsPath = os.path.join(moduleDir, "Resources", "Icons")
    samplePath = os.path.join(moduleDir, "Resources", "SampleData", SAMPLE_FILE)
    if not os.path.isfile(samplePath):
        logging.warning(f"Patient Implant Planner sample CT is missing: {samplePath}")
        return

    SampleData.SampleDataLogic.registerCustomSampleDataCategory(SAMPLE_CATEGORY, title=_("Patient Implant Planner"))
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category=SAMPLE_CATEGORY,
        sampleName=SAMPLE_NAME,
        thumbnailFileName=os.path.join(iconsPath, "PatientImplantPlannerSampleCT.png"),
        uris=pathlib.Path(samplePath).resolve().as_uri(),
        fileNames="PatientImplantPlannerLumbarCT.nii.gz",
        checksums=f"SHA256:{_sampleChecksum(samplePath)}",
        nodeNames="LumbarCT",
        loadFileTypes="VolumeFile",
    )


def _sampleChecksum(path: str) -> str:
    from PatientImplantPlannerLib.export.manifest import sha256_of

    return sha256_of(path)


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
        "(Apache-2.0), fpdf2 for the PDF design record (LGPL-3.0), and scikit-fem (BSD-3), wildmeshing (fTetWild, "
        "MPL-2.0) and pyamg (MIT) for the finite-element strength check; about 30 MB, downloaded from the Python "
        "Package Index.\n\n"
        "Install now? Slicer may be unresponsive for up to a minute."
    ).format(packages=", ".join(missing))
    if not slicer.util.confirmOkCancelDisplay(text, windowTitle=_("Install Python packages")):
        return False
    with slicer.util.WaitCursor():
        slicer.util.pip_install(missing)
    importlib.invalidate_caches()
    return all(importlib.util.find_spec(name) is not None for name in REQUIRED_PACKAGES)


#
# PatientImplantPlannerParameterNode
#


class Placement(enum.Enum):
    """Where the strut lies (the engine's Plan.placement); ``label`` is what the combobox shows."""

    auto = "auto"
    axis = "axis"
    anterior = "anterior"
    anterolateral_right = "anterolateral_right"
    lateral_right = "lateral_right"
    anterolateral_left = "anterolateral_left"
    lateral_left = "lateral_left"

    def label(self) -> str:
        return {
            "auto": _("Around the bodies, clear of keep-out anatomy (automatic)"),
            "axis": _("Along the spinal axis"),
            "anterior": _("Against the anterior vertebral bodies"),
            "anterolateral_right": _("Anterolateral right"),
            "lateral_right": _("Lateral right"),
            "anterolateral_left": _("Anterolateral left"),
            "lateral_left": _("Lateral left"),
        }[self.value]


class StrutProfile(enum.Enum):
    """Cross-section of the strut (the engine's ImplantParameters.profile)."""

    circle = "circle"
    rounded_rectangle = "rounded_rectangle"
    curved_plate = "curved_plate"

    def label(self) -> str:
        return {"circle": _("Circle"), "rounded_rectangle": _("Rounded rectangle"),
                "curved_plate": _("Curved plate")}[self.value]


@parameterNodeWrapper
class PatientImplantPlannerParameterNode:
    """All user choices of the module, saved with the scene. Fields are grouped by GUI panel.

    Bone segmentation:
    inputVolume - the CT (Hounsfield units).
    threshold - HU range of bone; 226..3071 is the usual "Bone" preset.
    previewThreshold - show the threshold live in the slice views (volume display threshold, cheap).
    seedPoints - points on the bone to keep (vertebral bodies).
    excludePoints - points on touching structures to cut away (contrast-filled aorta, CT table).
    roi - optional box that limits the segmentation.
    fillInterior - fill cancellous bone and the canal-free interior of cortical shells.
    minIslandMm3 - islands smaller than this are removed (mm^3).
    smoothingMm - Gaussian smoothing of the result (mm, 0 = none).
    boneSegmentation - output segmentation (created if none is selected).
    boneSegmentId - segment holding the bone in boneSegmentation (set by the segmentation step).
    boneSegmentationRecord - how the bone segment was made (record.SegmentationInfo as JSON), for the design record.
    show3D - show the bone surface in the 3D view after segmentation.
    exportFolder - folder for the bone STL and its manifest.
    coordinateSystem - coordinate system of the written STL (LPS is what most CAD/printing software expects).

    Levels and axis:
    levelSegmentation - optional segmentation with one segment per vertebra (e.g. TotalSegmentator's "vertebrae_L1"):
        the level source instead of the bone; the level names then pick the end vertebrae and the points are optional.
    proximalPoint, distalPoint - one point in the body of the last healthy vertebra above / first below the defect.
    proximalLevel, distalLevel - their names (e.g. L1, L3), used in labels and the design record.
    caseId - identifies the plan (its scene folder "Implant plan <case ID>") and names the exported files.
    placement - automatic around the bodies clear of keep-out anatomy, along the spinal axis, or a fixed angle.
    autoUpdate - redesign automatically after edits of the plan's markups or of implant/screw/variant settings.

    Implant (engine ImplantParameters; ranges as its validate()):
    implantProfile, diameterMm, widthMm, depthMm, cornerRadiusMm, plateCurvatureRadiusMm, offsetAnteriorMm,
    offsetLateralMm, footplateFraction, footplateThicknessMm, porousLayerMm.

    Screws (engine ScrewParameters): screwType (SCREW_CATALOGUE key), screwsPerEnd, holeClearanceMm, safetyMarginMm,
    convergenceDeg.

    Variants: variantsMm - extra lengths of the oversized variants, as typed ("2, 3, 4").

    Export bundle (engine ExportParameters, LatticeParameters, GuideParameters):
    bundleFolder - each export makes a new folder <case ID>_<date-time> in it.
    bundleCoordinateSystem - coordinates of the written STL/3MF files.
    exportStl, export3mf - file formats.
    exportImplant ... exportReport - the parts to write (EXPORT_PART_FIELDS).
    latticePoreSizeUm, latticePorosityPercent - porous layer targets; fitClearanceMm - drill guide fit.

    Defect implant (mirror-defect kind, issue 12; markups conventions in defectscene.py): defectSymmetryPlane (empty:
    found automatically), defectResectionPlaneA/B + defectRemoveSide, defectResectionROI, defectResectionSegmentation
    + defectResectionSegmentId (painted), defectFitClearanceMm, defectMarginMm, defectCutFaceFillMm, defectGridMm,
    defectStrutPath + defectStrutDiameterMm, defectRodPoints (seat, then a point along the rod), defectScrewPoints
    (entry/target pairs), defectScrewType, defectDrillGuides. Built into a new folder in bundleFolder.
    """

    # Bone segmentation
    inputVolume: vtkMRMLScalarVolumeNode
    threshold: Annotated[FloatRange, RangeBounds(-1024, 3071), Default(FloatRange(226, 3071))]
    previewThreshold: bool = True
    seedPoints: vtkMRMLMarkupsFiducialNode
    excludePoints: vtkMRMLMarkupsFiducialNode
    roi: vtkMRMLMarkupsROINode
    fillInterior: bool = True
    minIslandMm3: Annotated[float, WithinRange(0, 1_000_000)] = 1000.0
    smoothingMm: Annotated[float, WithinRange(0, 5)] = 0.0
    boneSegmentation: vtkMRMLSegmentationNode
    boneSegmentId: str = ""
    boneSegmentationRecord: str = ""
    show3D: bool = True
    exportFolder: pathlib.Path
    coordinateSystem: Annotated[str, Choice(["LPS", "RAS"])] = "LPS"

    # Levels and axis
    levelSegmentation: Optional[vtkMRMLSegmentationNode]
    keepOutSegmentation: Optional[vtkMRMLSegmentationNode]
    keepOutClearanceMm: Annotated[float, WithinRange(0, 20)] = 2.0
    acceptedRisks: str = ""
    proximalPoint: vtkMRMLMarkupsFiducialNode
    distalPoint: vtkMRMLMarkupsFiducialNode
    proximalLevel: str = ""
    distalLevel: str = ""
    caseId: str = "CASE-001"
    placement: Placement = Placement.auto
    autoUpdate: bool = True

    # Implant
    implantProfile: StrutProfile = StrutProfile.circle
    diameterMm: Annotated[float, WithinRange(1, 40)] = 12.0
    widthMm: Annotated[float, WithinRange(1, 60)] = 10.0
    depthMm: Annotated[float, WithinRange(1, 40)] = 5.0
    cornerRadiusMm: Annotated[float, WithinRange(0, 20)] = 1.0
    plateCurvatureRadiusMm: Annotated[float, WithinRange(1.5, 1000)] = 20.0
    offsetAnteriorMm: Annotated[float, WithinRange(-50, 50)] = 0.0
    offsetLateralMm: Annotated[float, WithinRange(-50, 50)] = 0.0
    footplateFraction: Annotated[float, WithinRange(0.1, 1)] = 0.7
    footplateThicknessMm: Annotated[float, WithinRange(0.5, 20)] = 3.0
    porousLayerMm: Annotated[float, WithinRange(0, 20)] = 1.5

    # Screws
    screwType: Annotated[str, Choice(SCREW_TYPES)] = "3.5 cancellous"
    screwsPerEnd: Annotated[int, WithinRange(1, 4)] = 2
    holeClearanceMm: Annotated[float, WithinRange(0, 2)] = 0.25
    safetyMarginMm: Annotated[float, WithinRange(0, 15)] = 2.0
    convergenceDeg: Annotated[float, WithinRange(-15, 30)] = 10.0

    # Variants
    variantsMm: str = "2, 3, 4"

    # Export bundle
    bundleFolder: pathlib.Path
    bundleCoordinateSystem: Annotated[str, Choice(["LPS", "RAS"])] = "LPS"
    exportStl: bool = True
    export3mf: bool = False
    exportImplant: bool = True
    exportVariants: bool = True
    exportLattice: bool = True
    exportDockingGuides: bool = True
    exportDrillGuides: bool = True
    exportCheckModel: bool = True
    exportBoneModel: bool = True
    exportReport: bool = True
    runFECheck: bool = False
    latticePoreSizeUm: Annotated[float, WithinRange(300, 1000)] = 550.0
    latticePorosityPercent: Annotated[float, WithinRange(50, 85)] = 70.0
    fitClearanceMm: Annotated[float, WithinRange(0, 1)] = 0.2

    # Defect implant (engine mirrordefect.MirrorDefectParameters via defectscene.defect_parameters_from_nodes)
    defectSymmetryPlane: Optional[vtkMRMLMarkupsPlaneNode]
    defectResectionPlaneA: Optional[vtkMRMLMarkupsPlaneNode]
    defectResectionPlaneB: Optional[vtkMRMLMarkupsPlaneNode]
    defectRemoveSide: Annotated[str, Choice(["positive", "negative"])] = "positive"
    defectResectionROI: Optional[vtkMRMLMarkupsROINode]
    defectResectionSegmentation: Optional[vtkMRMLSegmentationNode]
    defectResectionSegmentId: str = ""
    defectFitClearanceMm: Annotated[float, WithinRange(0, 2)] = 0.2
    defectMarginMm: Annotated[float, WithinRange(-3, 3)] = 0.0
    defectCutFaceFillMm: Annotated[float, WithinRange(0, 10)] = 3.0
    defectGridMm: Annotated[float, WithinRange(0.1, 2)] = 1.0
    defectStrutPath: Optional[vtkMRMLMarkupsCurveNode]
    defectStrutDiameterMm: Annotated[float, WithinRange(2, 20)] = 6.0
    defectRodPoints: Optional[vtkMRMLMarkupsFiducialNode]
    defectScrewPoints: Optional[vtkMRMLMarkupsFiducialNode]
    defectScrewType: Annotated[str, Choice(SCREW_TYPES)] = "6.5 cancellous"
    defectDrillGuides: bool = True


#
# PatientImplantPlannerWidget
#


class PatientImplantPlannerWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Uses ScriptedLoadableModuleWidget base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent=None) -> None:
        """Called when the user opens the module the first time and the widget is initialized."""
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)  # needed for parameter node observation
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        # Volume whose display threshold we changed for the live preview, and its display settings before that.
        self._previewVolume = None
        self._previewSavedDisplay = None
        # True while an engine call runs (its progress updates process GUI events: no second call meanwhile).
        self._busy = False
        # The designed plan shown by the planning panels and when to redesign it (engine, Qt-free; made in setup()
        # with the countdown timer). Not saved with the scene: a plan in the scene is regenerated from its nodes.
        self._editor = None
        self._designButtonToolTip = ""
        self._planObservations = []  # [(node, event, method)]
        self._lastBundle = None

    def setup(self) -> None:
        """Called when the user opens the module the first time and the widget is initialized."""
        ScriptedLoadableModuleWidget.setup(self)

        # Load widget from .ui file (created by Qt Designer).
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/PatientImplantPlanner.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)

        # Set scene in MRML widgets. In the .ui file the top-level qMRMLWidget's "mrmlSceneChanged(vtkMRMLScene*)"
        # signal is connected to each MRML widget's "setMRMLScene(vtkMRMLScene*)" slot.
        uiWidget.setMRMLScene(slicer.mrmlScene)

        # Logic implements all computations that should be possible to run in batch mode, without a GUI.
        self.logic = PatientImplantPlannerLogic()

        # These connections ensure that we update parameter node when scene is closed
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self._setupBoneSegmentationPanel()
        self._setupLevelsPanel()
        self._setupImplantPanel()
        self._setupScrewsPanel()
        self._setupVariantsPanel()
        self._setupDefectPanel()
        self._setupExportBundlePanel()
        self._setupStatusArea()

        # Make sure parameter node is initialized (needed for module reload)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Called when the application closes and the module widget is destroyed."""
        self._restoreThresholdPreview()
        self._clearPlan()
        self.removeObservers()

    def enter(self) -> None:
        """Called each time the user opens this module."""
        # Make sure parameter node exists and observed
        self.initializeParameterNode()

    def exit(self) -> None:
        """Called each time the user opens a different module."""
        # Other modules should show the CT as the user left it.
        self._restoreThresholdPreview()
        # Do not react to parameter node changes (GUI will be updated when the user enters into the module)
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        """Called just before the scene is closed."""
        # Parameter node will be reset, do not use it anymore
        self._previewVolume = None
        self._previewSavedDisplay = None
        self._clearPlan()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        """Called just after the scene is closed."""
        # If this module is shown while the scene is closed then recreate a new parameter node immediately
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        """Ensure parameter node exists and observed."""
        # Parameter node stores all user choices in parameter values, node selections, etc.
        # so that when the scene is saved and reloaded, these settings are restored.
        self.setParameterNode(self.logic.getParameterNode())

        # Select default input nodes if nothing is selected yet to save a few clicks for the user
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.inputVolume = firstVolumeNode
        if str(self._parameterNode.exportFolder) in ("", "."):
            self._parameterNode.exportFolder = pathlib.Path(slicer.app.defaultScenePath) / "PatientImplantPlanner"
        if str(self._parameterNode.bundleFolder) in ("", "."):
            self._parameterNode.bundleFolder = pathlib.Path(slicer.app.defaultScenePath) / "PatientImplantPlanner"

    def setParameterNode(self, inputParameterNode: Optional[PatientImplantPlannerParameterNode]) -> None:
        """
        Set and observe parameter node.
        Observation is needed because when the parameter node is changed then the GUI must be updated immediately.
        """
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # Note: in the .ui file, a Qt dynamic property called "SlicerParameterName" is set on each
            # ui element that needs connection.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            self._onParameterNodeModified()

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        """Refresh what the parameter node binding does not cover: button states, previews. One call per panel."""
        self._updateBoneSegmentationPanel()
        self._updateLevelsPanel()
        self._updateImplantPanel()
        self._updateExportBundlePanel()
        self._updateDefectPanel()
        self._scheduleUpdateIfSettingsChanged()

    #
    # Shared: progress bar, status line, engine calls with error display
    #

    def _setupStatusArea(self) -> None:
        self.ui.progressBar.hide()
        self.ui.statusLabel.text = ""
        self._showWarnings([])

    def _onProgress(self, fraction: float, message: str) -> None:
        """Engine progress callback: update the bar and keep the GUI responsive."""
        self.ui.progressBar.value = int(round(100 * min(max(fraction, 0.0), 1.0)))
        self.ui.progressBar.format = f"{message} (%p%)" if message else "%p%"
        slicer.app.processEvents()

    def _setStatus(self, text: str) -> None:
        self.ui.statusLabel.text = text

    def _showWarnings(self, warnings) -> None:
        """Warnings of the last design (or why an automatic update failed), in the orange line above the status."""
        self.ui.planWarningsLabel.text = "\n".join(f"\u26a0 {w}" for w in warnings)
        self.ui.planWarningsLabel.visible = bool(warnings)

    def _dependenciesReady(self, what: str) -> bool:
        if ensureDependencies():
            return True
        self._setStatus(_("{what} needs the Python packages {packages}; they are not installed.").format(
            what=what, packages=", ".join(REQUIRED_PACKAGES.values())))
        return False

    @contextlib.contextmanager
    def _engineCall(self, failureMessage: str, quiet: bool = False):
        """Run an engine call with progress bar and wait cursor; show PlannerErrors as problem + fix, no traceback.

        quiet: automatic updates report failures in the status and warnings lines only, never in a dialog.
        """
        self._busy = True
        self.ui.progressBar.value = 0
        self.ui.progressBar.show()
        slicer.app.setOverrideCursor(qt.Qt.WaitCursor)
        try:
            yield
        except PlannerError as e:
            slicer.app.restoreOverrideCursor()
            self._setStatus(f"{failureMessage} {e.problem}")
            if quiet:
                self._showWarnings([f"{e.problem} {e.fix}".strip()])
            else:
                slicer.util.errorDisplay(f"{e.problem}\n\n{e.fix}".strip(), windowTitle=failureMessage)
        except Exception as e:
            slicer.app.restoreOverrideCursor()
            logging.error(traceback.format_exc())
            self._setStatus(f"{failureMessage} {e}")
            if not quiet:
                slicer.util.errorDisplay(f"{failureMessage}\n\n{e}", windowTitle=failureMessage,
                                         detailedText=traceback.format_exc())
        else:
            slicer.app.restoreOverrideCursor()
        finally:
            self.ui.progressBar.hide()
            self._busy = False

    #
    # Panel: Bone segmentation
    #

    def _setupBoneSegmentationPanel(self) -> None:
        for placeWidget in (self.ui.seedPointsPlaceWidget, self.ui.excludePointsPlaceWidget):
            placeWidget.placeMultipleMarkups = slicer.qSlicerMarkupsPlaceWidget.ForcePlaceMultipleMarkups
        self.ui.segmentBoneButton.connect("clicked(bool)", self.onSegmentBoneButton)
        # clicked (not toggled): only a user's click shows/hides the surface, not loading the parameter node.
        self.ui.show3DCheckBox.connect("clicked(bool)", self.onShow3DClicked)
        self.ui.exportBoneButton.connect("clicked(bool)", self.onExportBoneButton)

    def _updateBoneSegmentationPanel(self) -> None:
        p = self._parameterNode
        if not p:
            return
        self.ui.seedPointsPlaceWidget.setCurrentNode(p.seedPoints)
        self.ui.excludePointsPlaceWidget.setCurrentNode(p.excludePoints)
        self._updateThresholdPreview()

        # Seeds are optional for the engine (without them it keeps every large piece and says so in a warning).
        if p.inputVolume:
            self.ui.segmentBoneButton.toolTip = _("Segment the bone connected to the seed points")
            self.ui.segmentBoneButton.enabled = True
        else:
            self.ui.segmentBoneButton.toolTip = _("Select a CT volume first")
            self.ui.segmentBoneButton.enabled = False

        hasBone = self._boneSegmentAvailable()
        self.ui.show3DCheckBox.enabled = hasBone
        self.ui.exportBoneButton.enabled = hasBone and str(p.exportFolder) not in ("", ".")
        self.ui.exportBoneButton.toolTip = (
            _("Write the bone surface as a verified binary STL and a manifest into the export folder")
            if hasBone else _("Segment the bone first")
        )

    def _boneSegmentAvailable(self) -> bool:
        p = self._parameterNode
        return bool(
            p and p.boneSegmentation and p.boneSegmentId
            and p.boneSegmentation.GetSegmentation().GetSegment(p.boneSegmentId) is not None
        )

    def _updateThresholdPreview(self) -> None:
        """Show the threshold range in the slice views by thresholding the CT's display (voxels outside are hidden)."""
        p = self._parameterNode
        volume = p.inputVolume if p and p.previewThreshold else None
        if volume is not self._previewVolume:
            self._restoreThresholdPreview()
        displayNode = volume.GetDisplayNode() if volume else None
        if not displayNode:
            return
        if self._previewVolume is None:
            self._previewVolume = volume
            self._previewSavedDisplay = (displayNode.GetApplyThreshold(), displayNode.GetAutoThreshold(),
                                         displayNode.GetLowerThreshold(), displayNode.GetUpperThreshold())
        wasModifying = displayNode.StartModify()
        displayNode.SetAutoThreshold(False)
        displayNode.SetThreshold(p.threshold.minimum, p.threshold.maximum)
        displayNode.SetApplyThreshold(True)
        displayNode.EndModify(wasModifying)

    def _restoreThresholdPreview(self) -> None:
        volume, saved = self._previewVolume, self._previewSavedDisplay
        self._previewVolume = None
        self._previewSavedDisplay = None
        displayNode = volume.GetDisplayNode() if volume and saved else None
        if not displayNode:
            return
        applyThreshold, autoThreshold, lower, upper = saved
        wasModifying = displayNode.StartModify()
        displayNode.SetThreshold(lower, upper)
        displayNode.SetAutoThreshold(autoThreshold)
        displayNode.SetApplyThreshold(applyThreshold)
        displayNode.EndModify(wasModifying)

    def onSegmentBoneButton(self) -> None:
        """Segment the bone with the current parameters."""
        from PatientImplantPlannerLib.record.designrecord import SegmentationInfo

        p = self._parameterNode
        with self._engineCall(_("Bone segmentation failed.")):
            self._setStatus(_("Segmenting bone..."))
            params = self.logic.boneSegmentationParameters(
                thresholdRange=(p.threshold.minimum, p.threshold.maximum),
                seedNode=p.seedPoints,
                excludeNode=p.excludePoints,
                roiNode=p.roi,
                fillInterior=p.fillInterior,
                minIslandMm3=p.minIslandMm3,
                smoothingMm=p.smoothingMm,
            )
            result = self.logic.segmentBone(p.inputVolume, params, p.boneSegmentation, progress=self._onProgress)
            p.boneSegmentation = result.segmentation_node
            p.boneSegmentId = result.segment_id
            p.boneSegmentationRecord = SegmentationInfo.from_segmentation(
                result, ct_name=p.inputVolume.GetName()).to_json()
            # The segmentation shows the result now; give the slice views the full CT back.
            p.previewThreshold = False
            if p.show3D:
                self.logic.showBoneIn3D(result.segmentation_node)
            status = _("Bone: {volume:.1f} cm³.").format(volume=result.volume_mm3 / 1000.0)
            if result.warnings:
                status += " " + " ".join(result.warnings)
            self._setStatus(status)

    def onShow3DClicked(self, checked: bool) -> None:
        p = self._parameterNode
        if not self._boneSegmentAvailable():
            return
        if checked:
            with self._engineCall(_("Showing the bone in 3D failed.")):
                self.logic.showBoneIn3D(p.boneSegmentation)
        else:
            displayNode = p.boneSegmentation.GetDisplayNode()
            if displayNode:
                displayNode.SetVisibility3D(False)

    def onExportBoneButton(self) -> None:
        """Export the bone segment as STL + manifest; ask before overwriting an earlier export."""
        from PatientImplantPlannerLib.record.designrecord import SegmentationInfo

        p = self._parameterNode
        if not ensureDependencies():
            self._setStatus(_("Export needs the Python package manifold3d; it is not installed."))
            return
        with self._engineCall(_("Bone model export failed.")):
            self._setStatus(_("Exporting bone model..."))
            exportArgs = dict(
                segmentationNode=p.boneSegmentation,
                segmentId=p.boneSegmentId,
                outDir=str(p.exportFolder),
                coordinateSystem=p.coordinateSystem,
                parameters=SegmentationInfo.from_json(p.boneSegmentationRecord).as_dict(),
                progress=self._onProgress,
            )
            try:
                result = self.logic.exportBone(**exportArgs)
            except OutputExistsError as e:
                slicer.app.restoreOverrideCursor()
                overwrite = slicer.util.confirmOkCancelDisplay(
                    f"{e.problem}\n\n" + _("Overwrite the earlier export?"), windowTitle=_("Overwrite files?"))
                slicer.app.setOverrideCursor(qt.Qt.WaitCursor)
                if not overwrite:
                    self._setStatus(_("Export cancelled: nothing was overwritten."))
                    return
                result = self.logic.exportBone(overwrite=True, **exportArgs)
            self._setStatus(
                _("Wrote {stl} ({triangles} triangles, {cs}) and {manifest}.").format(
                    stl=result.stl_path, triangles=result.check.n_triangles, cs=p.coordinateSystem,
                    manifest=os.path.basename(result.manifest_path)))

    #
    # Panel: Levels and axis (designs the plan that the following panels show and export)
    #

    def _setupLevelsPanel(self) -> None:
        for selector, placeWidget in ((self.ui.proximalPointSelector, self.ui.proximalPointPlaceWidget),
                                      (self.ui.distalPointSelector, self.ui.distalPointPlaceWidget)):
            placeWidget.placeMultipleMarkups = slicer.qSlicerMarkupsPlaceWidget.ForcePlaceSingleMarkup
            selector.connect("nodeAddedByUser(vtkMRMLNode*)", self._onVertebraPointNodeAdded)
        self._designButtonToolTip = self.ui.designImplantButton.toolTip
        self.ui.designImplantButton.connect("clicked(bool)", self.onDesignImplantButton)
        self.ui.updateImplantButton.connect("clicked(bool)", self.onUpdateImplantButton)
        timer = qt.QTimer()
        timer.setSingleShot(True)
        timer.setInterval(AUTO_UPDATE_DELAY_MS)
        timer.connect("timeout()", self._onRegenerateTimer)
        self._editor = PlanEditor(timer, self.logic.planMarkupsGeometry)

    @staticmethod
    def _onVertebraPointNodeAdded(node) -> None:
        # One point per vertebra: a point list made here takes no second point.
        node.SetMaximumNumberOfControlPoints(1)

    def _updateLevelsPanel(self) -> None:
        p = self._parameterNode
        if not p:
            return
        self.ui.proximalPointPlaceWidget.setCurrentNode(p.proximalPoint)
        self.ui.distalPointPlaceWidget.setCurrentNode(p.distalPoint)
        if not p.inputVolume:
            missing = _("Select a CT volume first")
        elif not self._boneSegmentAvailable():
            missing = _("Segment the bone first")
        elif not (p.levelSegmentation or (p.proximalPoint and p.distalPoint)):
            missing = _("Select (or create) the proximal and distal vertebra points, or a vertebra segmentation, first")
        else:
            missing = ""
        self.ui.designImplantButton.enabled = not missing
        self.ui.designImplantButton.toolTip = missing or self._designButtonToolTip
        self.ui.updateImplantButton.enabled = bool(p.inputVolume) and self._boneSegmentAvailable()

    def _settingsSnapshot(self):
        """The settings a redesign depends on besides the markups (a change triggers the automatic update)."""
        p = self._parameterNode
        if not p:
            return None
        return (p.placement, p.implantProfile, p.diameterMm, p.widthMm, p.depthMm, p.cornerRadiusMm,
                p.plateCurvatureRadiusMm, p.offsetAnteriorMm, p.offsetLateralMm, p.footplateFraction,
                p.footplateThicknessMm, p.porousLayerMm, p.screwType, p.screwsPerEnd, p.holeClearanceMm,
                p.safetyMarginMm, p.convergenceDeg, p.variantsMm.strip(), p.keepOutClearanceMm,
                p.acceptedRisks.strip(), p.keepOutSegmentation)

    def onDesignImplantButton(self) -> None:
        """Design the implant from the two vertebra points (or the vertebra segmentation and level names) and the
        current settings (a fresh plan for the case)."""
        p = self._parameterNode
        if self._busy or not self._dependenciesReady(_("Implant design")):
            return
        self._editor.timer.stop()
        settings = self._settingsSnapshot()
        with self._engineCall(_("Implant design failed.")):
            self._setStatus(_("Designing implant..."))
            levelLabels = self.logic.levelLabels(p.levelSegmentation, p.inputVolume)
            plan = self.logic.planFromParameters(p, levelLabels)
            inputs = (p.inputVolume, p.boneSegmentation, p.boneSegmentId)
            result, nodes = self.logic.designImplant(*inputs, plan, progress=self._onProgress, levelLabels=levelLabels,
                                                     keepOut=self.logic.keepOut(p, p.inputVolume))
            self._setPlan(result, nodes, inputs, settings, screwsEdited=False, levelLabels=levelLabels)
            self._setPlanStatus(_("Implant designed."))
        self._scheduleUpdateIfSettingsChanged()

    def onUpdateImplantButton(self) -> None:
        """Redesign the case's plan from its markups as they are in the scene, with the current settings."""
        if self._busy or not self._dependenciesReady(_("Updating the implant")):
            return
        self._editor.timer.stop()
        p = self._parameterNode
        self._regenerate(p.caseId.strip(), (p.inputVolume, p.boneSegmentation, p.boneSegmentId), quiet=False)

    def _onRegenerateTimer(self) -> None:
        if self._editor.countdown_ended(busy=self._busy):
            # The shown plan is updated on the CT and bone it was designed on, whatever is selected now.
            self._regenerate(self._editor.result.plan.case_id, self._editor.inputs, quiet=True)

    def _regenerate(self, caseId: str, inputs: tuple, quiet: bool) -> None:
        p = self._parameterNode
        if not p:
            return
        attempt = self._editor.attempt(self._settingsSnapshot())
        done = False
        with self._engineCall(_("Updating the implant failed."), quiet=quiet):
            self._setStatus(_("Updating implant..."))
            self._applyEdits(caseId, inputs)
            self._setPlanStatus(_("Implant updated."))
            done = True
        if not done:
            self._editor.update_failed(attempt)
        self._scheduleUpdateIfSettingsChanged()

    def _setPlanStatus(self, what: str) -> None:
        result = self._editor.result
        status = f"{what} {self.logic.planSummary(result)}"
        if result.warnings:
            status += " " + _("Warnings: {warnings}").format(warnings=" ".join(result.warnings))
        self._setStatus(status)

    def _applyEdits(self, caseId: str, inputs: tuple):
        """Redesign the case's plan from its scene nodes with the current settings and show it (inside an engine
        call); returns (result, nodes)."""
        p = self._parameterNode
        settings = self._settingsSnapshot()
        resetScrews = self._editor.screws_should_reset(caseId, self._parameterNode.screwsPerEnd)
        levelLabels = self._editor.level_labels_for(
            caseId, inputs[0], lambda: self.logic.levelLabels(self._parameterNode.levelSegmentation, inputs[0]))
        result, nodes = self.logic.regenerate(caseId, *inputs, progress=self._onProgress, resetScrews=resetScrews,
                                              levelLabels=levelLabels, keepOut=self.logic.keepOut(p, inputs[0]),
                                              **self.logic.designSettings(p))
        self._setPlan(result, nodes, inputs, settings, screwsEdited=self._editor.screws_edited and not resetScrews,
                      levelLabels=levelLabels)
        return result, nodes

    def _setPlan(self, result, nodes, inputs, settings, screwsEdited: bool, levelLabels=None) -> None:
        """Show a new design: keep it, observe its markups for edits, fill the result displays."""
        self._editor.set_plan(EditedPlan(result, nodes, inputs, levelLabels), settings, screwsEdited)
        self._observePlanNodes(nodes)
        self._showPlanResults()

    def _clearPlan(self) -> None:
        if self._editor is not None:
            self._editor.clear()
        self._unobservePlanNodes()
        self._lastBundle = None
        if hasattr(self, "ui"):
            self._showPlanResults()
            self.ui.bundleResultLabel.text = ""
            self.ui.openReportButton.enabled = False

    def _scheduleUpdateIfSettingsChanged(self) -> None:
        p = self._parameterNode
        if p and self._editor is not None:
            self._editor.settings_changed(self._settingsSnapshot(), auto_update=p.autoUpdate, busy=self._busy)

    # Edits of the plan's markups (axis curve, endplate planes, screw lines)

    def _observePlanNodes(self, nodes) -> None:
        self._unobservePlanNodes()
        markups = slicer.vtkMRMLMarkupsNode
        events = (
            (markups.PointModifiedEvent, self._onPlanMarkupsModified),
            (markups.PointAddedEvent, self._onPlanMarkupsModified),
            (markups.PointRemovedEvent, self._onPlanMarkupsModified),
            (markups.PointStartInteractionEvent, self._onPlanInteractionStart),
            (markups.PointEndInteractionEvent, self._onPlanInteractionEnd),
        )
        for node in [nodes.axis, nodes.proximal_endplate, nodes.distal_endplate, *nodes.screws]:
            if node is None:
                continue
            observed = list(events)
            if node in (nodes.proximal_endplate, nodes.distal_endplate):
                # A plane's normal typed in the Markups module changes the node without a point event.
                observed.append((vtk.vtkCommand.ModifiedEvent, self._onPlanMarkupsModified))
            for event, method in observed:
                self.addObserver(node, event, method)
                self._planObservations.append((node, event, method))

    def _unobservePlanNodes(self) -> None:
        for node, event, method in self._planObservations:
            self.removeObserver(node, event, method)
        self._planObservations = []

    def _onPlanInteractionStart(self, caller=None, event=None) -> None:
        self._editor.interaction_started()

    def _onPlanInteractionEnd(self, caller=None, event=None) -> None:
        self._editor.interacting = False
        self._onPlanMarkupsModified(caller, event)

    def _onPlanMarkupsModified(self, caller=None, event=None) -> None:
        """A markups node of the plan changed: the plan editor redesigns (debounced) if its geometry really moved.

        Selecting or renaming a point fires the same events; the editor compares positions, and our own redesign
        (which rewrites the nodes) runs while busy.
        """
        p = self._parameterNode
        action = self._editor.markups_modified(self._settingsSnapshot(), auto_update=bool(p and p.autoUpdate),
                                               busy=self._busy)
        if action == NEEDS_UPDATE:
            self._setStatus(_("The plan's markups were edited: click 'Update implant from edits' to redesign."))

    # Result displays of the implant, screws and variants panels

    def _showPlanResults(self) -> None:
        result, nodes = self._editor.result, self._editor.nodes
        self.ui.implantSummaryLabel.text = self.logic.planSummary(result) if result else ""
        self.ui.measurementsTableView.setMRMLTableNode(nodes.table if nodes else None)
        rows = self.logic.screwRows(result) if result else []
        table = self.ui.screwsTableWidget
        table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, text in enumerate(row):
                table.setItem(r, c, qt.QTableWidgetItem(text))
        self._fillVisibleModelComboBox()
        self._showWarnings(list(result.warnings) if result else [])

    #
    # Panel: Implant
    #

    def _setupImplantPanel(self) -> None:
        self.ui.implantSummaryLabel.text = ""

    def _updateImplantPanel(self) -> None:
        """Enable the dimensions the chosen profile uses; the anterior offset is computed for anterior placement."""
        p = self._parameterNode
        if not p:
            return
        profile = p.implantProfile
        self.ui.diameterSpinBox.enabled = profile == StrutProfile.circle
        self.ui.widthSpinBox.enabled = profile != StrutProfile.circle
        self.ui.depthSpinBox.enabled = profile != StrutProfile.circle
        self.ui.cornerRadiusSpinBox.enabled = profile == StrutProfile.rounded_rectangle
        self.ui.plateCurvatureRadiusSpinBox.enabled = profile == StrutProfile.curved_plate
        self.ui.offsetAnteriorSpinBox.enabled = p.placement == Placement.axis  # placement sets it otherwise

    #
    # Panel: Screws
    #

    def _setupScrewsPanel(self) -> None:
        table = self.ui.screwsTableWidget
        table.setColumnCount(4)
        table.setHorizontalHeaderLabels([_("Screw"), _("Length (mm)"), _("> 250 HU (%)"), _("Breach")])
        table.verticalHeader().visible = False
        table.horizontalHeader().setStretchLastSection(True)

    #
    # Panel: Defect implant (mirror-defect kind)
    #

    def _setupDefectPanel(self) -> None:
        self.ui.defectFindPlaneButton.connect("clicked(bool)", self.onDefectFindPlaneButton)
        self.ui.defectBuildButton.connect("clicked(bool)", self.onDefectBuildButton)
        self.ui.defectResidualLabel.text = ""
        self.ui.defectResultLabel.text = ""

    def _updateDefectPanel(self) -> None:
        p = self._parameterNode
        if not p:
            return
        hasBone = self._boneSegmentAvailable()
        self.ui.defectFindPlaneButton.enabled = hasBone and not self._busy
        hasResection = bool(p.defectResectionPlaneA or p.defectResectionPlaneB or p.defectResectionROI
                            or (p.defectResectionSegmentation and p.defectResectionSegmentId))
        self.ui.defectBuildButton.enabled = hasBone and hasResection and str(p.bundleFolder) not in ("", ".")
        self.ui.defectBuildButton.toolTip = (
            _("Build the implant, drill guides, files and design record into a new folder in the export folder")
            if hasBone and hasResection else _("Segment the bone and give a resection (planes, box or segment) first")
        )

    def onDefectFindPlaneButton(self) -> None:
        p = self._parameterNode
        if self._busy or not self._dependenciesReady(_("Finding the symmetry plane")):
            return
        with self._engineCall(_("Finding the symmetry plane failed.")):
            node, plane = self.logic.findDefectPlane(p.inputVolume, p.boneSegmentation, p.boneSegmentId,
                                                     p.defectSymmetryPlane)
            p.defectSymmetryPlane = node
            self.ui.defectResidualLabel.text = _(
                "Residual {residual} mm ({how}), {matched} % of the surface matched").format(
                residual=f"{plane.residual_mm:.2f}", how=_("found") if plane.found else _("as placed"),
                matched=f"{100 * plane.matched_fraction:.0f}")

    def onDefectBuildButton(self) -> None:
        p = self._parameterNode
        if self._busy or not self._dependenciesReady(_("Building the defect implant")):
            return
        with self._engineCall(_("Building the defect implant failed.")):
            manifest, models = self.logic.buildDefect(p, progress=self._onProgress)
            d = manifest["defect"]
            self.ui.defectResultLabel.text = _(
                "Implant {implant} mm³ for a {defect} mm³ defect; cut face within tolerance over {cover} %; "
                "{guides} drill guides; folder {folder}").format(
                implant=f"{d['implant_volume_mm3']:.0f}", defect=f"{d['defect_volume_mm3']:.0f}",
                cover=f"{100 * d['resection_surface_within_tolerance']:.0f}",
                guides=len(manifest["drill_guides"]), folder=manifest["folder"])
            self._showWarnings(manifest.get("warnings", []))

    #
    # Panel: Variants
    #

    def _setupVariantsPanel(self) -> None:
        self.ui.visibleModelComboBox.connect("currentIndexChanged(int)", self.onVisibleModelChanged)
        self._fillVisibleModelComboBox()

    def _fillVisibleModelComboBox(self) -> None:
        """One entry per implant size of the shown plan (nominal first); keeps the size the user chose."""
        combo = self.ui.visibleModelComboBox
        nodes = self._editor.nodes if self._editor else None
        labels = list(nodes.models) if nodes else []
        current = combo.currentText
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        for label in labels:
            combo.addItem(label)
        combo.currentIndex = labels.index(current) if current in labels else 0
        combo.blockSignals(wasBlocked)
        combo.enabled = bool(labels)
        if labels:
            self.logic.showImplantSize(nodes, combo.currentText)

    def onVisibleModelChanged(self, index: int) -> None:
        if self._editor.nodes and index >= 0:
            self.logic.showImplantSize(self._editor.nodes, self.ui.visibleModelComboBox.currentText)

    #
    # Panel: Export bundle
    #

    def _setupExportBundlePanel(self) -> None:
        self.ui.exportBundleButton.connect("clicked(bool)", self.onExportBundleButton)
        self.ui.openReportButton.connect("clicked(bool)", self.onOpenReportButton)
        self.ui.bundleResultLabel.text = ""
        self.ui.openReportButton.enabled = False

    def _updateExportBundlePanel(self) -> None:
        p = self._parameterNode
        if not p:
            return
        if not (p.inputVolume and self._boneSegmentAvailable()):
            missing = _("Segment the bone and design the implant first")
        elif str(p.bundleFolder) in ("", "."):
            missing = _("Choose an output folder first")
        else:
            missing = ""
        self.ui.exportBundleButton.enabled = not missing
        self.ui.exportBundleButton.toolTip = missing or _(
            "Write every selected part of case '{case}', verified, with a manifest, the plan, its markups and the "
            "bone segmentation, into a new folder.").format(case=p.caseId.strip())
        self.ui.latticePoreSizeSpinBox.enabled = p.exportLattice
        self.ui.latticePorositySpinBox.enabled = p.exportLattice
        self.ui.fitClearanceSpinBox.enabled = p.exportDrillGuides

    def _currentPlan(self):
        """(result, nodes) of the designed plan of the case ID in the panel, up to date with the scene; the plan's
        CT and bone are then in self._editor.inputs.

        A pending automatic update runs first; a plan loaded with the scene (no design in this session) is
        regenerated from its nodes.
        """
        p = self._parameterNode
        caseId = p.caseId.strip()
        pending = self._editor.take_pending()
        result = self._editor.result
        if result is not None and result.plan.case_id == caseId and not pending:
            return result, self._editor.nodes
        if not self.logic.hasPlan(caseId):
            raise PlanError(_("No implant is designed for case '{case}'.").format(case=caseId),
                            _("Click 'Design implant' first, or type the case ID of a plan in the scene."))
        self._setStatus(_("Updating implant..."))
        if result is not None and result.plan.case_id == caseId:
            inputs = self._editor.inputs
        else:
            inputs = (p.inputVolume, p.boneSegmentation, p.boneSegmentId)
        return self._applyEdits(caseId, inputs)

    def onExportBundleButton(self) -> None:
        """Write the export bundle of the case's plan into a new folder."""
        from PatientImplantPlannerLib.record.designrecord import SegmentationInfo

        p = self._parameterNode
        if self._busy or not self._dependenciesReady(_("Export")):
            return
        with self._engineCall(_("Export failed.")):
            exportParams, latticeParams, guideParams = self.logic.bundleParameters(p)
            result, nodes = self._currentPlan()
            if p.runFECheck:
                self._setStatus(_("Finite-element check of every size (1-3 minutes)..."))
                self.logic.feCheck(result, nodes, progress=self._onProgress)
            self._setStatus(_("Exporting bundle..."))
            bundle = self.logic.exportBundle(
                result, nodes, *self._editor.inputs, str(p.bundleFolder),
                exportParams, latticeParams, guideParams, progress=self._onProgress,
                segmentation=SegmentationInfo.from_json(p.boneSegmentationRecord))
            self._lastBundle = bundle
            self.ui.bundleResultLabel.text = _("{files} files in {folder}").format(files=len(bundle.files),
                                                                                   folder=bundle.folder)
            self.ui.openReportButton.text = _("Open design record") if bundle.report_html else _("Open folder")
            self.ui.openReportButton.enabled = True
            self._setStatus(_("Exported {files} verified files ({cs}) to {folder}.").format(
                files=len(bundle.files), cs=exportParams.coordinate_system, folder=bundle.folder))
        self._scheduleUpdateIfSettingsChanged()

    def onOpenReportButton(self) -> None:
        """Open the design record of the last export (or its folder) with the system's default application."""
        bundle = self._lastBundle
        if bundle is None:
            return
        target = bundle.report_html if bundle.report_html and os.path.isfile(bundle.report_html) else bundle.folder
        qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(target))


#
# PatientImplantPlannerLogic
#


class PatientImplantPlannerLogic(ScriptedLoadableModuleLogic):
    """Thin adapter from Slicer to the engine: builds the engine context from the running Slicer and calls
    ``PatientImplantPlannerLib``. Usable from the Python console without the widget.
    Uses ScriptedLoadableModuleLogic base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self) -> None:
        """Called when the logic class is instantiated. Can be used for initializing member variables."""
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return PatientImplantPlannerParameterNode(super().getParameterNode())

    @staticmethod
    def context():
        """The engine's view of the running Slicer: its scene and module logics."""
        from PatientImplantPlannerLib.scene.context import context_from_slicer

        return context_from_slicer()

    # Bone segmentation

    def loadCT(self, path: str, name: Optional[str] = None, progress=None) -> vtkMRMLScalarVolumeNode:
        """Load and validate a CT file or DICOM folder."""
        from PatientImplantPlannerLib.scene.ctload import load_ct

        return load_ct(self.context(), path, name=name, progress=progress)

    def boneSegmentationParameters(self, thresholdRange=(226.0, 3071.0), seedNode=None, excludeNode=None,
                                   roiNode=None, fillInterior=True, minIslandMm3=1000.0, smoothingMm=0.0):
        """Engine parameters from GUI values; seeds, exclude points and ROI are read from the markups nodes."""
        from PatientImplantPlannerLib.imaging.bonesegmentation import BoneSegmentationParameters
        from PatientImplantPlannerLib.scene.bonesegment import parameters_from_markups

        params = BoneSegmentationParameters(
            threshold_min=float(thresholdRange[0]),
            threshold_max=float(thresholdRange[1]),
            fill_interior=bool(fillInterior),
            min_island_mm3=float(minIslandMm3),
            smoothing_mm=float(smoothingMm),
        )
        return parameters_from_markups(
            params, seed_node=seedNode, exclude_node=excludeNode, roi_node=roiNode)

    def segmentBone(self, ctNode, params=None, segmentationNode=None, progress=None):
        """Segment the bone of ``ctNode``; returns the engine result (segmentation_node, segment_id, volume_mm3,
        warnings)."""
        from PatientImplantPlannerLib.scene.bonesegment import segment_bone

        return segment_bone(self.context(), ctNode, params=params, segmentation_node=segmentationNode,
                            progress=progress)

    def showBoneIn3D(self, segmentationNode) -> None:
        from PatientImplantPlannerLib.export.boneexport import show_bone_in_3d

        show_bone_in_3d(segmentationNode)

    def exportBone(self, segmentationNode, segmentId: str, outDir: str, coordinateSystem: str = "LPS",
                   overwrite: bool = False, parameters: Optional[dict] = None, progress=None):
        """Write the bone segment as a verified binary STL plus manifest; returns the engine result."""
        from PatientImplantPlannerLib.export.boneexport import export_bone_model

        return export_bone_model(self.context(), segmentationNode, segmentId, outDir,
                                 coordinate_system=coordinateSystem, overwrite=overwrite, parameters=parameters,
                                 progress=progress)

    # Implant plan

    @staticmethod
    def parseVariants(text: str) -> list:
        """Extra lengths of the oversized variants from text such as "2, 3, 4" or "+2 mm; +3 mm" (empty: none)."""
        tokens = [t for t in re.split(r"[,;\s]+", (text or "").replace("mm", " ")) if t]
        try:
            return [float(t) for t in tokens]
        except ValueError:
            raise PlanError(
                _("The variant lengths '{text}' are not numbers.").format(text=text),
                _("Type the extra lengths in mm separated by commas, e.g. 2, 3, 4 (leave empty for no variants)."),
            ) from None

    @staticmethod
    def vertebraPoint(node, which: str, optional: bool = False) -> Optional[list]:
        """RAS position of the first control point of a point list; PlanError naming the fix if there is none
        (None if ``optional``: vertebra labels then give the point)."""
        if node is None or node.GetNumberOfControlPoints() < 1:
            if optional:
                return None
            raise PlanError(_("No {which} vertebra point is placed.").format(which=which),
                            _("Place a point in the body of the {which} vertebra (Levels and axis panel).").format(
                                which=which))
        position = [0.0, 0.0, 0.0]
        node.GetNthControlPointPositionWorld(0, position)
        return [float(x) for x in position]

    @staticmethod
    def implantParameters(p):
        """Engine ImplantParameters from the parameter node."""
        from PatientImplantPlannerLib.design.strut import ImplantParameters

        return ImplantParameters(
            profile=p.implantProfile.value,
            diameter_mm=float(p.diameterMm),
            width_mm=float(p.widthMm),
            depth_mm=float(p.depthMm),
            corner_radius_mm=float(p.cornerRadiusMm),
            plate_curvature_radius_mm=float(p.plateCurvatureRadiusMm),
            offset_anterior_mm=float(p.offsetAnteriorMm),
            offset_lateral_mm=float(p.offsetLateralMm),
            footplate_fraction=float(p.footplateFraction),
            footplate_thickness_mm=float(p.footplateThicknessMm),
            porous_layer_mm=float(p.porousLayerMm),
        )

    @staticmethod
    def screwParameters(p):
        """Engine ScrewParameters from the parameter node."""
        from PatientImplantPlannerLib.design.screws import ScrewParameters

        return ScrewParameters(
            screw_type=p.screwType,
            per_end=int(p.screwsPerEnd),
            hole_clearance_mm=float(p.holeClearanceMm),
            safety_margin_mm=float(p.safetyMarginMm),
            convergence_deg=float(p.convergenceDeg),
        )

    def designSettings(self, p) -> dict:
        """The settings a redesign applies on top of the plan in the scene (keyword arguments of regenerate())."""
        return {
            "implant": self.implantParameters(p),
            "screws": self.screwParameters(p),
            "variantsMm": self.parseVariants(p.variantsMm),
            "placement": p.placement.value,
            "keepOutClearanceMm": float(p.keepOutClearanceMm),
            "acceptedRisks": self.parseAcceptedRisks(p.acceptedRisks),
        }

    @staticmethod
    def parseAcceptedRisks(text: str) -> list:
        """'clearance:aorta, screw:proximal left' -> ['clearance:aorta', 'screw:proximal left']."""
        return [part.strip() for part in (text or "").split(",") if part.strip()]

    def keepOut(self, p, ctNode):
        """The keep-out anatomy for a design on ``ctNode`` (engine: workflow.keep_out_for), cached while the
        segmentations and the CT are unchanged (a redesign after each drag must not rebuild it)."""
        from PatientImplantPlannerLib.scene import workflow

        key = tuple((n.GetID(), n.GetMTime()) if n is not None else None
                    for n in (p.keepOutSegmentation, p.levelSegmentation, ctNode))
        cached = getattr(self, "_keepOutCache", None)
        if cached is None or cached[0] != key:
            self._keepOutCache = (key, workflow.keep_out_for(ctNode, p.keepOutSegmentation, p.levelSegmentation))
        return self._keepOutCache[1]

    @staticmethod
    def levelNames(p) -> tuple:
        """(proximal, distal) level names as typed; with a vertebra segmentation as the level source they are
        required (they pick the segments) and normalised like the segment names ("l1", "vertebrae_L1" -> "L1")."""
        names = ((p.proximalLevel or "").strip(), (p.distalLevel or "").strip())
        if p.levelSegmentation is None:
            return names
        from PatientImplantPlannerLib.imaging.levelsource import vertebra_name

        empty = [which for which, name in zip((_("proximal"), _("distal")), names) if not name]
        if empty:
            raise PlanError(
                _("The level name is empty ({which}): with a vertebra segmentation as the level source the level "
                  "names pick the end vertebrae.").format(which=", ".join(empty)),
                _("Type the names of the end vertebrae as in the segmentation's segments (e.g. L1 and L3 for "
                  "'vertebrae_L1' and 'vertebrae_L3'), or set Vertebra labels to None and place the points."))
        return tuple(vertebra_name(name) or name for name in names)

    def levelLabels(self, levelSegNode, ctNode):
        """(label map on the CT grid, {level name: value}) from a segmentation with one segment per vertebra (the
        design's level source instead of the bone); None without a segmentation."""
        if levelSegNode is None:
            return None
        from PatientImplantPlannerLib.scene.labelfiles import labels_from_segmentation

        return labels_from_segmentation(levelSegNode, ctNode)

    def planFromParameters(self, p, levelLabels=None):
        """A validated engine Plan from the parameter node: vertebra points and names, case ID, placement, implant,
        screws, variants, and the bone segmentation parameters that made the bone segment (for the record).

        With a vertebra segmentation (levelSegmentation) the points are optional and the level names required: a
        missing point is put in the named vertebra of ``levelLabels`` (made from levelSegmentation on the CT if not
        given)."""
        from PatientImplantPlannerLib.design.plan import Plan
        from PatientImplantPlannerLib.imaging.bonesegmentation import BoneSegmentationParameters
        from PatientImplantPlannerLib.imaging.levelsource import fill_plan_points
        from PatientImplantPlannerLib.record.designrecord import SegmentationInfo
        from PatientImplantPlannerLib.scene.volumes import ijk_to_ras_matrix

        caseId = (p.caseId or "").strip()
        if not caseId:
            raise PlanError(_("The case ID is empty."), _("Type a case ID (it names the plan and exported files)."))
        settings = self.designSettings(p)
        proximalLevel, distalLevel = self.levelNames(p)
        pointsOptional = p.levelSegmentation is not None
        plan = Plan(
            case_id=caseId,
            proximal_level=proximalLevel,
            distal_level=distalLevel,
            proximal_point_ras=self.vertebraPoint(p.proximalPoint, _("proximal"), optional=pointsOptional),
            distal_point_ras=self.vertebraPoint(p.distalPoint, _("distal"), optional=pointsOptional),
            implant=settings["implant"],
            screws=settings["screws"],
            variants_mm=settings["variantsMm"],
            placement=settings["placement"],
            keep_out_clearance_mm=settings["keepOutClearanceMm"],
            accepted_risks=settings["acceptedRisks"],
        )
        segmentationParameters = SegmentationInfo.from_json(p.boneSegmentationRecord).parameters
        if segmentationParameters:
            plan.segmentation = BoneSegmentationParameters.from_dict(segmentationParameters)
        if pointsOptional and (plan.proximal_point_ras is None or plan.distal_point_ras is None):
            if p.inputVolume is None:
                raise PlanError(_("No CT is selected."), _("Select the CT (Bone segmentation panel)."))
            labelMap, values = levelLabels or self.levelLabels(p.levelSegmentation, p.inputVolume)
            fill_plan_points(plan, labelMap, values, ijk_to_ras_matrix(p.inputVolume))
        plan.validate()
        return plan

    def designImplant(self, ctNode, segNode, segmentId: str, plan, progress=None, levelLabels=None, keepOut=None):
        """Design the plan's implant and create/update its nodes in the scene; returns (PlanResult, PlanNodes).
        levelLabels: vertebra labels from levelLabels() (they define the vertebrae; the plan's level names pick the
        ends where it has no points); keepOut: the anatomy to keep clear of (keepOut()). The scene is not touched if
        the design fails."""
        from PatientImplantPlannerLib.scene import workflow

        return workflow.design_in_scene(self.context(), ctNode, segNode, segmentId, plan, progress=progress,
                                        level_labels=levelLabels, keep_out=keepOut)

    def regenerate(self, caseId: str, ctNode, segNode, segmentId: str, progress=None, implant=None, screws=None,
                   variantsMm=None, placement=None, resetScrews: bool = False, levelLabels=None,
                   keepOutClearanceMm=None, acceptedRisks=None, keepOut=None):
        """Redesign the plan of ``caseId`` from its nodes in the scene, with the user's edits of axis, endplates and
        screws; returns (PlanResult, PlanNodes).

        implant, screws, variantsMm, placement: new settings replacing the plan's (None keeps them).
        resetScrews: lay the screws out again instead of keeping the screw lines in the scene.
        levelLabels: the vertebra labels the plan was designed with (None: levels from the bone).
        """
        from PatientImplantPlannerLib.scene import workflow
        from PatientImplantPlannerLib.scene.planfolder import plan_from_scene

        ctx = self.context()
        settings = {"implant": implant, "screws": screws, "variants_mm": variantsMm, "placement": placement,
                    "keep_out_clearance_mm": keepOutClearanceMm, "accepted_risks": acceptedRisks}
        if not resetScrews and levelLabels is None and all(value is None for value in settings.values()):
            return workflow.regenerate_in_scene(ctx, caseId, ctNode, segNode, segmentId, progress=progress,
                                                keep_out=keepOut)
        plan = plan_from_scene(ctx, caseId, read_edits=True)
        for name, value in settings.items():
            if value is not None:
                setattr(plan, name, value)
        if resetScrews:
            plan.trajectories = None
        return workflow.design_in_scene(ctx, ctNode, segNode, segmentId, plan, progress=progress,
                                        level_labels=levelLabels, keep_out=keepOut)

    def hasPlan(self, caseId: str) -> bool:
        """Whether the scene holds a plan folder for this case ID."""
        from PatientImplantPlannerLib.scene.planfolder import find_plan_folder

        return bool(find_plan_folder(self.context(), caseId))

    @staticmethod
    def planSummary(result) -> str:
        """One line on the nominal implant: length, mass, stiffness against a 5.5 mm Ti rod, bone interference."""
        m = result.measurements
        return _(
            "Length {length:.1f} mm, mass {mass:.1f} g, stiffness vs 5.5 mm Ti rod: axial {axial:.1f}x, bending "
            "{bending:.1f}x; bone interference {interference:.0f} mm³."
        ).format(length=m["length_mm"], mass=m["mass_g"], axial=m["axial_stiffness_ratio"],
                 bending=m["bending_stiffness_ratio"], interference=m["interference_mm3"])

    @staticmethod
    def screwRows(result) -> list:
        """[(name, length mm, % of the screw in bone above 250 HU, breach)] as display text, one row per screw."""
        rows = []
        for screw in result.measurements.get("screws", []):
            rows.append((
                screw["trajectory"]["name"],
                f"{screw['length_mm']:g}",
                f"{100.0 * screw['grade'].get('gt250', 0.0):.0f}",
                _("yes") if screw["breach"] else _("no"),
            ))
        return rows

    @staticmethod
    def planMarkupsGeometry(nodes) -> dict:
        """Positions of the plan's editable markups (axis, endplate planes, screw lines), to tell real edits from
        events that move nothing (selection, renaming)."""

        def points(node):
            if node is None:
                return ()
            out = []
            for i in range(node.GetNumberOfControlPoints()):
                position = [0.0, 0.0, 0.0]
                node.GetNthControlPointPositionWorld(i, position)
                out.append(tuple(round(x, 4) for x in position))
            return tuple(out)

        def plane(node):
            if node is None:
                return ()
            centre, x, y, z = [0.0] * 3, [0.0] * 3, [0.0] * 3, [0.0] * 3
            node.GetCenterWorld(centre)
            node.GetAxesWorld(x, y, z)
            return tuple(round(v, 5) for v in (*centre, *x, *y, *z))

        return {
            "axis": points(nodes.axis),
            "endplates": (plane(nodes.proximal_endplate), plane(nodes.distal_endplate)),
            "screws": tuple(points(line) for line in nodes.screws),
        }

    @staticmethod
    def showImplantSize(nodes, label: str) -> None:
        """Show the implant model of one size ("nominal", "+2 mm", ...) and hide the others (they overlap)."""
        for key, model in nodes.models.items():
            display = model.GetDisplayNode()
            if display is not None:
                display.SetVisibility(key == label)

    # Export bundle

    @staticmethod
    def bundleParameters(p) -> tuple:
        """(ExportParameters, LatticeParameters, GuideParameters) from the parameter node, validated."""
        from PatientImplantPlannerLib.export.parameters import ALL_PARTS, ExportParameters
        from PatientImplantPlannerLib.parts.guides import GuideParameters
        from PatientImplantPlannerLib.parts.lattice import LatticeParameters

        formats = tuple(fmt for fmt, on in (("stl", p.exportStl), ("3mf", p.export3mf)) if on)
        if not formats:
            raise PlannerError(_("No file format is selected for the export."), _("Tick STL and/or 3MF."))
        parts = tuple(part for part in ALL_PARTS if getattr(p, EXPORT_PART_FIELDS[part]))
        if not parts:
            raise PlannerError(_("No part is selected for the export."), _("Tick at least one part to export."))
        exportParams = ExportParameters(coordinate_system=p.bundleCoordinateSystem, formats=formats, parts=parts)
        latticeParams = LatticeParameters(pore_size_um=float(p.latticePoreSizeUm),
                                          porosity=float(p.latticePorosityPercent) / 100.0)
        guideParams = GuideParameters(fit_clearance_mm=float(p.fitClearanceMm))
        for params in (exportParams, latticeParams, guideParams):
            params.validate()
        return exportParams, latticeParams, guideParams

    @staticmethod
    def defectParameters(p) -> dict:
        """The plan's mirror_defect block from the parameter node's defect fields (validated by the engine)."""
        from PatientImplantPlannerLib.scene.defectscene import defect_parameters_from_nodes

        return defect_parameters_from_nodes(
            symmetry_plane=p.defectSymmetryPlane,
            resection_planes=[n for n in (p.defectResectionPlaneA, p.defectResectionPlaneB) if n is not None],
            remove=p.defectRemoveSide, roi=p.defectResectionROI, fit_clearance_mm=p.defectFitClearanceMm,
            margin_mm=p.defectMarginMm, cut_face_fill_mm=p.defectCutFaceFillMm, strut_curve=p.defectStrutPath,
            strut_diameter_mm=p.defectStrutDiameterMm, rod_points=p.defectRodPoints,
            screw_points=p.defectScrewPoints, screw_type=p.defectScrewType, grid_mm=p.defectGridMm,
            drill_guides=p.defectDrillGuides)

    def findDefectPlane(self, ctNode, segNode, segmentId: str, planeNode=None):
        """(plane node, engine SymmetryPlane): found automatically, or the placed plane's residual measured."""
        from PatientImplantPlannerLib.scene.defectscene import find_plane_in_scene

        return find_plane_in_scene(ctNode, segNode, segmentId, planeNode, scene=self.context().scene)

    def buildDefect(self, p, progress=None):
        """Build the mirror-defect implant of the parameter node's settings into a new folder in its bundleFolder;
        returns (manifest with its "folder", {file stem: model node})."""
        from PatientImplantPlannerLib.export.bundle import new_bundle_folder
        from PatientImplantPlannerLib.scene.defectscene import build_defect_in_scene

        params = self.defectParameters(p)  # checked before anything is computed or written
        folder = new_bundle_folder(str(p.bundleFolder), p.caseId)
        if progress:
            progress(0.1, _("Building the defect implant"))
        segId = p.defectResectionSegmentId if p.defectResectionSegmentation else ""
        if segId and p.defectResectionSegmentation is not p.boneSegmentation:
            raise PlanError(_("The resection segment must be in the bone's segmentation."),
                            _("Paint the resection as a segment of the bone segmentation."))
        manifest, models = build_defect_in_scene(self.context().scene, p.inputVolume, p.boneSegmentation,
                                                 p.boneSegmentId, params, folder, resection_segment_id=segId or None,
                                                 case_id=p.caseId, coordinate_system=p.bundleCoordinateSystem)
        manifest["folder"] = folder
        return manifest, models

    def feCheck(self, result, nodes, loadN: float = 500.0, progress=None):
        """Finite-element check of every size of the plan: figures into the manifest and record, the nominal's
        stress field as a model node, the figures in the measurements table (engine: workflow.fe_check_in_scene)."""
        from PatientImplantPlannerLib.scene import workflow

        return workflow.fe_check_in_scene(self.context(), result, nodes, load_N=loadN, progress=progress)

    def exportBundle(self, result, nodes, ctNode, segNode, segmentId: str, outParent: str, exportParams=None,
                     latticeParams=None, guideParams=None, progress=None, segmentation=None):
        """Write the export bundle of a designed plan into a new folder in ``outParent``; returns the BundleResult
        (folder, manifest_path, files, report_html, ...)."""
        from PatientImplantPlannerLib.scene import workflow

        return workflow.export_in_scene(
            self.context(), result, nodes, ctNode, segNode, segmentId, out_parent=outParent,
            export_params=exportParams, lattice_params=latticeParams, guide_params=guideParams,
            segmentation=segmentation, progress=progress)


#
# PatientImplantPlannerTest
#


class PatientImplantPlannerTest(ScriptedLoadableModuleTest):
    """
    Self-test on a synthetic spine phantom and the bundled sample CT; no network.
    Uses ScriptedLoadableModuleTest base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def setUp(self):
        """Do whatever is needed to reset the state - typically a scene clear will be enough."""
        slicer.mrmlScene.Clear()

    def runTest(self):
        """Run as few or as many tests as needed here."""
        self.setUp()
        self.test_BoneSegmentationPhantom()
        self.setUp()
        self.test_LoadSampleCT()
        self.setUp()
        self.test_DesignImplantPhantom()
        self.setUp()
        self.test_DesignFromVertebraLabels()
        self.setUp()
        self.test_ExportBundlePhantom()

    def test_BoneSegmentationPhantom(self):
        """Segment a small synthetic spine from a seed per vertebra, compare with the phantom's bone, export it."""
        import tempfile

        import numpy as np

        from PatientImplantPlannerLib.phantoms.spine import make_spine_phantom

        self.delayDisplay("Building spine phantom")
        logic = PatientImplantPlannerLogic()
        spacing = 1.0
        levels = ("L1", "L2")
        phantom = make_spine_phantom(spacing=spacing, levels=levels)
        ctNode = phantom.add_to_scene(logic.context(), "PhantomCT")
        seeds = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "BoneSeeds")
        for level in levels:
            seeds.AddControlPoint(vtk.vtkVector3d(*phantom.body_point(level)))

        self.delayDisplay("Segmenting bone")
        params = logic.boneSegmentationParameters(seedNode=seeds)
        fractions = []
        result = logic.segmentBone(ctNode, params, progress=lambda f, m: fractions.append(f))
        self.assertIsNotNone(result.segmentation_node.GetSegmentation().GetSegment(result.segment_id))
        truth = phantom.bone_mask
        self.assertEqual(result.mask.shape, truth.shape)
        dice = 2.0 * np.count_nonzero(result.mask & truth) / (np.count_nonzero(result.mask) + np.count_nonzero(truth))
        # Both vertebrae, cortex and filled cancellous core: the phantom's bone up to partial-volume edges.
        self.assertGreater(dice, 0.9)
        truth_mm3 = float(np.count_nonzero(truth)) * spacing**3
        self.assertAlmostEqual(result.volume_mm3 / truth_mm3, 1.0, delta=0.15)
        self.assertTrue(fractions and fractions[-1] >= 0.99)

        logic.showBoneIn3D(result.segmentation_node)
        self.assertTrue(result.segmentation_node.GetSegmentation().ContainsRepresentation("Closed surface"))

        import importlib.util

        if importlib.util.find_spec("manifold3d") is None:
            self.delayDisplay("manifold3d is not installed: export not tested")
            return
        self.delayDisplay("Exporting bone model")
        with tempfile.TemporaryDirectory() as outDir:
            exported = logic.exportBone(result.segmentation_node, result.segment_id, outDir)
            self.assertTrue(os.path.isfile(exported.stl_path))
            self.assertTrue(os.path.isfile(exported.manifest_path))
            self.assertTrue(exported.check.ok)
            self.assertAlmostEqual(exported.check.volume_mm3 / result.volume_mm3, 1.0, delta=0.05)
        self.delayDisplay("Test passed")

    def test_LoadSampleCT(self):
        """The bundled sample CT loads from the extension folder, through the engine and through Sample Data."""
        samplePath = os.path.join(os.path.dirname(__file__), "Resources", "SampleData", SAMPLE_FILE)
        logic = PatientImplantPlannerLogic()
        ctNode = logic.loadCT(samplePath, name="SampleCT")
        self.assertEqual(ctNode.GetImageData().GetDimensions(), (122, 101, 112))
        lo, hi = ctNode.GetImageData().GetScalarRange()
        self.assertLess(lo, -500)
        self.assertGreater(hi, 1000)

        import SampleData

        registerSampleData()
        sampleNode = SampleData.downloadSample(SAMPLE_NAME)
        self.assertEqual(sampleNode.GetImageData().GetDimensions(), (122, 101, 112))
        self.delayDisplay("Test passed")

    def _designPhantomImplant(self, caseId: str):
        """Segment a 3-level phantom and design a curved plate against the anterior bodies from L1 to L3, through
        the logic and the parameter node as the GUI does. Returns (logic, parameters, ct, bone, result, nodes)."""
        from PatientImplantPlannerLib.phantoms.spine import make_spine_phantom

        logic = PatientImplantPlannerLogic()
        levels = ("L1", "L2", "L3")
        phantom = make_spine_phantom(spacing=1.0, levels=levels)
        ctNode = phantom.add_to_scene(logic.context(), "PhantomCT")
        seeds = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "BoneSeeds")
        for level in levels:
            seeds.AddControlPoint(vtk.vtkVector3d(*phantom.body_point(level)))
        bone = logic.segmentBone(ctNode, logic.boneSegmentationParameters(seedNode=seeds))

        p = logic.getParameterNode()
        for name, level in (("proximal", "L1"), ("distal", "L3")):
            node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", f"{name} vertebra")
            node.AddControlPoint(vtk.vtkVector3d(*phantom.body_point(level)))
            setattr(p, f"{name}Point", node)
            setattr(p, f"{name}Level", level)
        p.caseId = caseId
        p.placement = Placement.anterior
        p.implantProfile = StrutProfile.curved_plate
        p.widthMm, p.depthMm = 10.0, 5.0
        p.variantsMm = "2, 3, 4"
        plan = logic.planFromParameters(p)
        self.assertEqual(plan.variants_mm, [2.0, 3.0, 4.0])
        self.assertEqual((plan.placement, plan.implant.profile), ("anterior", "curved_plate"))

        fractions = []
        result, nodes = logic.designImplant(ctNode, bone.segmentation_node, bone.segment_id, plan,
                                            progress=lambda f, m: fractions.append(f))
        self.assertTrue(fractions and fractions[-1] >= 0.99)
        return logic, p, ctNode, bone, result, nodes

    def test_DesignImplantPhantom(self):
        """Design on a phantom: closed nominal model, three longer variants, screws, and a redesign that follows a
        dragged endplate."""
        import numpy as np

        from PatientImplantPlannerLib.core.mesh import check_mesh, from_polydata

        with self.assertRaises(PlannerError):
            PatientImplantPlannerLogic.parseVariants("2, three")
        self.assertEqual(PatientImplantPlannerLogic.parseVariants("+2 mm; 3"), [2.0, 3.0])

        self.delayDisplay("Designing an implant on a spine phantom")
        logic, p, ctNode, bone, result, nodes = self._designPhantomImplant("SELFTEST-DESIGN")
        self.assertEqual(set(nodes.models), {"nominal", "+2 mm", "+3 mm", "+4 mm"})
        check = check_mesh(from_polydata(nodes.models["nominal"].GetPolyData()))
        self.assertTrue(check.ok, check.problems)
        self.assertTrue(check.watertight and check.manifold)
        self.assertAlmostEqual(check.volume_mm3, result.nominal.mesh.volume(), delta=1.0)
        for extra in (2.0, 3.0, 4.0):
            self.assertAlmostEqual(result.variants[extra].length_mm - result.nominal.length_mm, extra, delta=0.1)
        self.assertEqual(len(logic.screwRows(result)), 4)
        self.assertIn("mm", logic.planSummary(result))
        self.assertGreater(nodes.table.GetNumberOfRows(), 8)
        logic.showImplantSize(nodes, "+3 mm")
        visible = {k for k, m in nodes.models.items() if m.GetDisplayNode().GetVisibility()}
        self.assertEqual(visible, {"+3 mm"})

        self.delayDisplay("Dragging the distal endplate 1.5 mm and redesigning")
        before = logic.planMarkupsGeometry(nodes)
        nodes.screws[0].SetNthControlPointSelected(0, False)  # fires PointModifiedEvent but moves nothing
        self.assertEqual(logic.planMarkupsGeometry(nodes), before)
        centre = np.zeros(3)
        nodes.distal_endplate.GetCenterWorld(centre)
        nodes.distal_endplate.SetCenterWorld(*(centre - 1.5 * result.distal_endplate.normal))
        self.assertNotEqual(logic.planMarkupsGeometry(nodes)["endplates"], before["endplates"])
        self.assertEqual(logic.planMarkupsGeometry(nodes)["screws"], before["screws"])
        nodeCount = slicer.mrmlScene.GetNumberOfNodes()
        edited, editedNodes = logic.regenerate(p.caseId, ctNode, bone.segmentation_node, bone.segment_id,
                                               resetScrews=True, **logic.designSettings(p))
        self.assertAlmostEqual(edited.nominal.length_mm - result.nominal.length_mm, 1.5, delta=0.1)
        self.assertEqual(editedNodes.models["nominal"].GetID(), nodes.models["nominal"].GetID())
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodeCount)
        self.delayDisplay("Test passed")

    @staticmethod
    def vertebraLabelSegmentation(phantom, ctNode, name: str = "VertebraLabels"):
        """A segmentation with one segment per phantom vertebra, named as TotalSegmentator names them
        ("vertebrae_L1", ...), like its output loaded in Slicer."""
        from PatientImplantPlannerLib.scene.segments import set_segment_mask

        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
        node.SetReferenceImageGeometryParameterFromVolumeNode(ctNode)
        for vertebra in phantom.vertebrae:
            segmentId = node.GetSegmentation().AddEmptySegment("", f"vertebrae_{vertebra.name}")
            set_segment_mask(node, segmentId, phantom.vertebra_labels == vertebra.label, ctNode)
        return node

    def test_DesignFromVertebraLabels(self):
        """Vertebra segments as the level source, no points placed: the level names pick the ends, the endplates
        are those of the named vertebrae, and a redesign with the same labels gives the same implant."""
        import numpy as np

        from PatientImplantPlannerLib.phantoms.spine import make_spine_phantom
        from PatientImplantPlannerLib.scene.segments import set_segment_mask

        self.delayDisplay("Designing from vertebra segments without points")
        logic = PatientImplantPlannerLogic()
        phantom = make_spine_phantom(spacing=1.0, levels=("L1", "L2", "L3"))
        ctNode = phantom.add_to_scene(logic.context(), "PhantomCT")
        bone = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Bone")
        boneId = bone.GetSegmentation().AddEmptySegment("bone", "bone")
        set_segment_mask(bone, boneId, phantom.bone_mask, ctNode)

        p = logic.getParameterNode()
        p.levelSegmentation = self.vertebraLabelSegmentation(phantom, ctNode)
        p.caseId = "SELFTEST-LABELS"
        p.proximalLevel, p.distalLevel = "L1", ""
        with self.assertRaises(PlanError) as raised:
            logic.planFromParameters(p)
        self.assertIn("level name is empty (distal)", raised.exception.problem)
        p.inputVolume = ctNode
        p.distalLevel = "vertebrae_L3"  # normalised like the segment names
        labels = logic.levelLabels(p.levelSegmentation, ctNode)
        self.assertEqual(set(labels[1]), {"L1", "L2", "L3"})
        plan = logic.planFromParameters(p, labels)
        self.assertEqual((plan.proximal_level, plan.distal_level), ("L1", "L3"))
        # The labels put the missing points in the named vertebrae.
        for point, level in ((plan.proximal_point_ras, "L1"), (plan.distal_point_ras, "L3")):
            i, j, k = np.round(phantom.ras_to_ijk([point])[0]).astype(int)
            self.assertEqual(phantom.vertebra_labels[k, j, i], phantom.vertebra(level).label)

        result, nodes = logic.designImplant(ctNode, bone, boneId, plan, levelLabels=labels)
        self.assertEqual(result.levels.intermediate_levels, ["L2"])
        # The endplates are those of the named vertebrae (measured: 0.5 mm and 0.001 mm from the phantom's).
        for found, truth in ((result.proximal_endplate, phantom.vertebra("L1").inferior_endplate),
                             (result.distal_endplate, phantom.vertebra("L3").superior_endplate)):
            self.assertLess(float(np.linalg.norm(found.centre - truth.centre)), 1.5)
            self.assertGreater(float(found.normal @ truth.normal), 0.95)

        again, _nodes = logic.regenerate(p.caseId, ctNode, bone, boneId, levelLabels=labels, resetScrews=True,
                                         **logic.designSettings(p))
        self.assertAlmostEqual(again.nominal.length_mm, result.nominal.length_mm, delta=0.05)
        self.delayDisplay("Test passed")

    def test_ExportBundlePhantom(self):
        """Export a phantom plan (no lattice, no report: quick) and check the manifest lists every file written."""
        import tempfile

        from PatientImplantPlannerLib.export.manifest import verify_manifest

        self.delayDisplay("Designing an implant on a spine phantom")
        logic, p, ctNode, bone, result, nodes = self._designPhantomImplant("SELFTEST-EXPORT")
        p.exportLattice = False
        p.exportReport = False
        exportParams, latticeParams, guideParams = logic.bundleParameters(p)
        self.assertNotIn("lattice", exportParams.parts)
        self.assertNotIn("report", exportParams.parts)

        self.delayDisplay("Exporting the bundle")
        with tempfile.TemporaryDirectory() as outParent:
            bundle = logic.exportBundle(result, nodes, ctNode, bone.segmentation_node, bone.segment_id, outParent,
                                        exportParams, latticeParams, guideParams)
            self.assertEqual(os.path.dirname(bundle.folder), outParent)
            with open(bundle.manifest_path, encoding="utf-8") as f:
                manifest = json.load(f)
            listed = {entry["file"] for entry in manifest["files"]}
            written = set(os.listdir(bundle.folder)) - {os.path.basename(bundle.manifest_path)}
            self.assertEqual(listed, written)
            self.assertEqual(verify_manifest(bundle.manifest_path), [])
            implants = sorted(e["file"] for e in manifest["files"] if e["role"].startswith("implant"))
            self.assertEqual(implants, [f"SELFTEST-EXPORT_implant_{size}_Ti6Al4V.stl"
                                        for size in ("nominal", "plus2mm", "plus3mm", "plus4mm")])
            self.assertTrue(any("drill guide" in e["role"] for e in manifest["files"]))
            self.assertIsNone(bundle.report_html)
            self.assertEqual(bundle.lattice, [])
        self.delayDisplay("Test passed")
