"""The module's widget: its life cycle, the shared status and engine-call helpers, and the planning panels (levels
and axis, implant, screws, variants, export bundle). The bone segmentation and defect implant panels are mixins
(bonepanel.py, defectpanel.py)."""

import contextlib
import logging
import os
import pathlib
import traceback
from typing import Optional

import qt
import slicer
import vtk
from slicer.i18n import tr as _
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleWidget
from slicer.util import VTKObservationMixin

from PatientImplantPlannerLib.core.errors import PlanError, PlannerError
from PatientImplantPlannerLib.scene.planeditor import NEEDS_UPDATE, EditedPlan, PlanEditor
from PatientImplantPlannerModule.bonepanel import BoneSegmentationPanelMixin
from PatientImplantPlannerModule.defectpanel import DefectPanelMixin
from PatientImplantPlannerModule.dependencies import REQUIRED_PACKAGES, ensureDependencies
from PatientImplantPlannerModule.logic import PatientImplantPlannerLogic
from PatientImplantPlannerModule.parameters import PatientImplantPlannerParameterNode, Placement, StrutProfile

# Edits of the plan's markups or settings are applied this long after the last change (one redesign per burst).
AUTO_UPDATE_DELAY_MS = 500


class PatientImplantPlannerWidget(ScriptedLoadableModuleWidget, VTKObservationMixin, BoneSegmentationPanelMixin,
                                  DefectPanelMixin):
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
                p.footplateLateralFraction, p.footplateThicknessMm, p.porousLayerMm, p.screwType, p.screwsPerEnd,
                p.holeClearanceMm, p.safetyMarginMm, p.convergenceDeg, p.variantsMm.strip(), p.keepOutClearanceMm,
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
        table.setColumnCount(6)
        table.setHorizontalHeaderLabels([_("Screw"), _("Length (mm)"), _("> 250 HU (%)"), _("Breach"), _("Aim"),
                                         _("Drill line in bone (mm)")])
        table.verticalHeader().visible = False
        table.horizontalHeader().setStretchLastSection(True)


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
