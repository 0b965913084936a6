"""The module's self-test (Slicer's Reload and Test, and the ctest the CMake file registers)."""

import json
import os

import slicer
import vtk
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleTest

from PatientImplantPlannerLib.core.errors import PlanError, PlannerError
from PatientImplantPlannerModule.logic import PatientImplantPlannerLogic
from PatientImplantPlannerModule.parameters import Placement, StrutProfile
from PatientImplantPlannerModule.sampledata import MODULE_DIR, SAMPLE_FILE, SAMPLE_NAME, registerSampleData


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
        samplePath = os.path.join(MODULE_DIR, "Resources", "SampleData", SAMPLE_FILE)
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
