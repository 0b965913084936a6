"""The FE check as the Slicer module runs it (workflow.fe_check_in_scene): figures on the result, the stress field
as a model node in the plan folder, the figures in the measurements table."""

import numpy as np
import pytest

from PatientImplantPlannerLib.design.plan import Plan
from PatientImplantPlannerLib.design.strut import ImplantParameters
from PatientImplantPlannerLib.phantoms.spine import make_spine_phantom
from PatientImplantPlannerLib.scene.segments import set_segment_mask
from PatientImplantPlannerLib.scene.workflow import design_in_scene, fe_check_in_scene

pytestmark = pytest.mark.slow


def test_fe_check_in_the_scene(ctx):
    from vtk.util.numpy_support import vtk_to_numpy

    ph = make_spine_phantom(spacing=1.0, levels=("L1", "L2", "L3"))
    ct = ph.add_to_scene(ctx)
    seg = ctx.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Bone")
    sid = seg.GetSegmentation().AddEmptySegment("", "Bone")
    set_segment_mask(seg, sid, ph.bone_mask, ct)
    plan = Plan(case_id="FE-SCENE", proximal_level="L1", distal_level="L3", placement="axis",
                proximal_point_ras=list(ph.body_point("L1")), distal_point_ras=list(ph.body_point("L3")),
                implant=ImplantParameters(diameter_mm=10.0), variants_mm=[2.0])
    result, nodes = design_in_scene(ctx, ct, seg, sid, plan)
    fe_check_in_scene(ctx, result, nodes, load_N=500.0)
    assert set(result.fe) == {"nominal", "+2 mm"}
    assert all(v["safety_factor_yield"] > 1.0 for v in result.fe.values())
    model = nodes.models["fe:von_mises"]
    stress = vtk_to_numpy(model.GetPolyData().GetPointData().GetArray("von Mises (MPa)"))
    # A 10 mm strut under 500 N: mean axial stress F / A = 6.4 MPa; the field peaks at the footplate corners.
    assert 1.0 < np.percentile(stress, 50) < 100.0 and stress.max() == pytest.approx(
        result.fe["nominal"]["max_von_mises_MPa"], rel=1.0)
    assert model.GetDisplayNode().GetScalarVisibility() and model.GetDisplayNode().GetActiveScalarName() == \
        "von Mises (MPa)"
    table = nodes.table
    labels = [table.GetCellText(r, 0) for r in range(table.GetNumberOfRows())]
    assert "FE nominal: safety factor against yield at 500 N" in labels
