"""The "Bone segmentation" panel of the widget: threshold preview, segmentation, 3D display and bone STL export."""

import os

import qt
import slicer
from slicer.i18n import tr as _

from PatientImplantPlannerLib.core.errors import OutputExistsError
from PatientImplantPlannerModule.dependencies import ensureDependencies


class BoneSegmentationPanelMixin:
    """The bone segmentation panel's methods of PatientImplantPlannerWidget (a mixin: it uses the widget's ui,
    parameter node, logic and engine-call helpers)."""

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
            result = self.logic.segmentBone(p.inputVolume, params, p.boneSegmentation, progress=self._onProgress,
                                            keepOut=self.logic.keepOut(p, p.inputVolume))
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
