"""The "Defect implant" panel of the widget (mirror-defect kind): symmetry plane and building the implant."""

from slicer.i18n import tr as _


class DefectPanelMixin:
    """The defect implant panel's methods of PatientImplantPlannerWidget (a mixin: it uses the widget's ui,
    parameter node, logic and engine-call helpers)."""

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
