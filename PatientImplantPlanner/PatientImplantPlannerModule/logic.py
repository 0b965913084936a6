"""The module's logic: a thin adapter from the parameter node and the Slicer scene to the engine's calls."""

import re
from typing import Optional

from slicer import vtkMRMLScalarVolumeNode
from slicer.i18n import tr as _
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic

from PatientImplantPlannerLib.core.errors import PlanError, PlannerError
from PatientImplantPlannerModule.parameters import EXPORT_PART_FIELDS, PatientImplantPlannerParameterNode


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

    def segmentBone(self, ctNode, params=None, segmentationNode=None, progress=None, keepOut=None):
        """Segment the bone of ``ctNode``; returns the engine result (segmentation_node, segment_id, volume_mm3,
        warnings). ``keepOut`` (keepout.KeepOut): its labelled structures are left out (contrast vessels and heart
        are above the bone threshold)."""
        from PatientImplantPlannerLib.scene.bonesegment import segment_bone

        return segment_bone(self.context(), ctNode, params=params, segmentation_node=segmentationNode,
                            progress=progress, not_bone=keepOut.labelled_mask() if keepOut is not None else None)

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
            footplate_lateral_fraction=float(p.footplateLateralFraction),
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
        """[(name, length mm, % of the screw in bone above 250 HU, breach, how the layout aimed it, mm of bone the
        drill line crosses)] as display text, one row per screw."""
        layouts = {t.name: getattr(t, "layout", None) or {} for t in getattr(result, "trajectories", None) or []}
        drill = result.measurements.get("drill_line_bone_mm") or {}
        rows = []
        for screw in result.measurements.get("screws", []):
            name = screw["trajectory"]["name"]
            lay = layouts.get(name, {})
            aim = (_("{c:.1f} deg, skew {s:+.0f} deg, {o:g} mm out").format(
                c=lay["convergence_deg"], s=lay.get("skew_deg", 0.0), o=lay.get("outward_mm", 0.0))
                if "convergence_deg" in lay else _("by hand"))
            rows.append((
                name,
                f"{screw['length_mm']:g}",
                f"{100.0 * screw['grade'].get('gt250', 0.0):.0f}",
                _("yes") if screw["breach"] else _("no"),
                aim,
                f"{drill[name]:.0f}" if name in drill else "",
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
