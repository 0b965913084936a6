"""Patient Implant Planner: the 3D Slicer GUI of the planner.

This file only binds GUI controls to a parameter node and calls the engine (``PatientImplantPlannerLib``), which is
Qt-free and also runs headless. Everything worth testing lives in the engine.

The GUI is a stack of panels. Adding a panel means adding, each in its own clearly marked section:
parameter fields in ``PatientImplantPlannerParameterNode``, a ctkCollapsibleButton in the .ui file,
``_setup<Panel>Panel`` / ``_update<Panel>Panel`` / handlers in the widget and the engine calls in the logic.
"""

import contextlib
import hashlib
import json
import logging
import os
import pathlib
import traceback
from typing import Annotated, Optional

import qt
import slicer
import vtk
from slicer import (
    vtkMRMLMarkupsFiducialNode,
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

from PatientImplantPlannerLib.errors import OutputExistsError, PlannerError

SAMPLE_CATEGORY = "PatientImplantPlanner"
SAMPLE_NAME = "PatientImplantPlannerLumbarCT"
SAMPLE_FILE = "example_ct.nii.gz"
# Python packages the engine needs that Slicer does not bundle (numpy, scipy, SimpleITK and VTK are bundled).
REQUIRED_PACKAGES = {"manifold3d": "manifold3d>=3.0"}


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
        checksums=f"SHA256:{_sha256(samplePath)}",
        nodeNames="LumbarCT",
        loadFileTypes="VolumeFile",
    )


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
        "Patient Implant Planner needs the Python package(s) {packages} for exact mesh operations "
        "(Apache-2.0, a few MB, downloaded from the Python Package Index).\n\n"
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
    boneSegmentationRecord - JSON of the CT name and engine parameters that made the bone segment (for the manifest).
    show3D - show the bone surface in the 3D view after segmentation.
    exportFolder - folder for the bone STL and its manifest.
    coordinateSystem - coordinate system of the written STL (LPS is what most CAD/printing software expects).
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
        self._setupStatusArea()

        # Make sure parameter node is initialized (needed for module reload)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Called when the application closes and the module widget is destroyed."""
        self._restoreThresholdPreview()
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

    #
    # Shared: progress bar, status line, engine calls with error display
    #

    def _setupStatusArea(self) -> None:
        self.ui.progressBar.hide()
        self.ui.statusLabel.text = ""

    def _onProgress(self, fraction: float, message: str) -> None:
        """Engine progress callback: update the bar and keep the GUI responsive."""
        self.ui.progressBar.value = int(round(100 * min(max(fraction, 0.0), 1.0)))
        self.ui.progressBar.format = f"{message} (%p%)" if message else "%p%"
        slicer.app.processEvents()

    def _setStatus(self, text: str) -> None:
        self.ui.statusLabel.text = text

    @contextlib.contextmanager
    def _engineCall(self, failureMessage: str):
        """Run an engine call with progress bar and wait cursor; show PlannerErrors as problem + fix, no traceback."""
        self.ui.progressBar.value = 0
        self.ui.progressBar.show()
        slicer.app.setOverrideCursor(qt.Qt.WaitCursor)
        try:
            yield
        except PlannerError as e:
            slicer.app.restoreOverrideCursor()
            self._setStatus(f"{failureMessage} {e.problem}")
            slicer.util.errorDisplay(f"{e.problem}\n\n{e.fix}".strip(), windowTitle=failureMessage)
        except Exception as e:
            slicer.app.restoreOverrideCursor()
            logging.error(traceback.format_exc())
            self._setStatus(f"{failureMessage} {e}")
            slicer.util.errorDisplay(f"{failureMessage}\n\n{e}", windowTitle=failureMessage,
                                     detailedText=traceback.format_exc())
        else:
            slicer.app.restoreOverrideCursor()
        finally:
            self.ui.progressBar.hide()

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
            p.boneSegmentationRecord = json.dumps(
                {"ct": p.inputVolume.GetName(), "bone_segmentation": result.parameters.as_dict()})
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
                parameters=json.loads(p.boneSegmentationRecord or "{}"),
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
        from PatientImplantPlannerLib.context import context_from_slicer

        return context_from_slicer()

    # Bone segmentation

    def loadCT(self, path: str, name: Optional[str] = None, progress=None) -> vtkMRMLScalarVolumeNode:
        """Load and validate a CT file or DICOM folder."""
        from PatientImplantPlannerLib.ctimport import load_ct

        return load_ct(self.context(), path, name=name, progress=progress)

    def boneSegmentationParameters(self, thresholdRange=(226.0, 3071.0), seedNode=None, excludeNode=None,
                                   roiNode=None, fillInterior=True, minIslandMm3=1000.0, smoothingMm=0.0):
        """Engine parameters from GUI values; seeds, exclude points and ROI are read from the markups nodes."""
        from PatientImplantPlannerLib import bonesegmentation

        params = bonesegmentation.BoneSegmentationParameters(
            threshold_min=float(thresholdRange[0]),
            threshold_max=float(thresholdRange[1]),
            fill_interior=bool(fillInterior),
            min_island_mm3=float(minIslandMm3),
            smoothing_mm=float(smoothingMm),
        )
        return bonesegmentation.parameters_from_markups(
            params, seed_node=seedNode, exclude_node=excludeNode, roi_node=roiNode)

    def segmentBone(self, ctNode, params=None, segmentationNode=None, progress=None):
        """Segment the bone of ``ctNode``; returns the engine result (segmentation_node, segment_id, volume_mm3,
        warnings)."""
        from PatientImplantPlannerLib.bonesegmentation import segment_bone

        return segment_bone(self.context(), ctNode, params=params, segmentation_node=segmentationNode,
                            progress=progress)

    def showBoneIn3D(self, segmentationNode) -> None:
        from PatientImplantPlannerLib.boneexport import show_bone_in_3d

        show_bone_in_3d(segmentationNode)

    def exportBone(self, segmentationNode, segmentId: str, outDir: str, coordinateSystem: str = "LPS",
                   overwrite: bool = False, parameters: Optional[dict] = None, progress=None):
        """Write the bone segment as a verified binary STL plus manifest; returns the engine result."""
        from PatientImplantPlannerLib.boneexport import export_bone_model

        return export_bone_model(self.context(), segmentationNode, segmentId, outDir,
                                 coordinate_system=coordinateSystem, overwrite=overwrite, parameters=parameters,
                                 progress=progress)


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

    def test_BoneSegmentationPhantom(self):
        """Segment a small synthetic spine from a seed per vertebra, compare with the phantom's bone, export it."""
        import tempfile

        import numpy as np

        from PatientImplantPlannerLib.phantom import make_spine_phantom

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
