"""Slicer's own 3D view, offscreen on the headless core: every kind of node the planner creates (implant models, the
bone segmentation, the axis curve, the endplate planes, the screw lines) is drawn by Slicer's displayable managers,
in its display colour and where it lies. Each kind is rendered alone (the others hidden) from the front, superior up.
"""

import numpy as np
import pytest
from PIL import Image

from PatientImplantPlannerLib.record import render
from PatientImplantPlannerLib.scene import views

MIN_PIXELS = {"model": 5000, "segmentation": 20000, "curve": 100, "planes": 300, "lines": 200}


@pytest.fixture(scope="module")
def planned():
    """A designed phantom plan in a headless scene, the bone shown in 3D as the module shows it."""
    from PatientImplantPlannerLib.design.plan import Plan
    from PatientImplantPlannerLib.export.boneexport import mask_surface, show_bone_in_3d
    from PatientImplantPlannerLib.imaging.bonesegmentation import BoneSegmentationParameters
    from PatientImplantPlannerLib.phantoms.spine import make_spine_phantom
    from PatientImplantPlannerLib.scene.bonesegment import segment_bone
    from PatientImplantPlannerLib.scene.context import create_headless_context
    from PatientImplantPlannerLib.scene.workflow import design_in_scene

    ctx = create_headless_context()
    ph = make_spine_phantom(spacing=1.0, levels=("L1", "L2", "L3"))
    ct = ph.add_to_scene(ctx, "PhantomCT")
    seeds = [tuple(ph.body_point(level)) for level in ("L1", "L2", "L3")]
    seg = segment_bone(ctx, ct, BoneSegmentationParameters(seeds_ras=seeds))
    show_bone_in_3d(seg.segmentation_node)
    plan = Plan(case_id="VIEW-1", proximal_level="L1", distal_level="L3",
                proximal_point_ras=list(ph.body_point("L1")), distal_point_ras=list(ph.body_point("L3")),
                variants_mm=[2.0])
    result, nodes = design_in_scene(ctx, ct, seg.segmentation_node, seg.segment_id, plan)
    kinds = {
        "model": [nodes.models["nominal"]],
        "segmentation": [seg.segmentation_node],
        "curve": [nodes.axis],
        "planes": [nodes.proximal_endplate, nodes.distal_endplate],
        "lines": list(nodes.screws),
    }
    yield ctx, kinds, nodes, result, mask_surface(seg.mask, ph.ijk_to_ras)
    ctx.scene.Clear(True)


def _display_nodes(scene):
    nodes = scene.GetNodesByClass("vtkMRMLDisplayNode")
    return [nodes.GetItemAsObject(i) for i in range(nodes.GetNumberOfItems())]


def render_only(ctx, shown, path, view="anterior", frame_ras=None):
    """Render with only the display nodes of ``shown`` visible; returns the image (H, W, 3) and restores the
    visibilities."""
    before = {d: d.GetVisibility() for d in _display_nodes(ctx.scene)}
    keep = {node.GetDisplayNode() for node in shown}
    try:
        for d in before:
            d.SetVisibility(d in keep)
        views.render_slicer_view(ctx.scene, ctx.app_logic, str(path), size=(500, 500), view=view,
                                  frame_ras=frame_ras)
    finally:
        for d, visible in before.items():
            d.SetVisibility(visible)
    return np.asarray(Image.open(path).convert("RGB"))


def drawn(image) -> np.ndarray:
    """Pixels that differ from the background (the scale bar, bottom left, excluded)."""
    mask = np.abs(image.astype(int) - np.array(render.BACKGROUND_RGB) * 255).max(axis=2) > 30
    mask[-45:, :200] = False
    return mask


@pytest.mark.parametrize("kind", list(MIN_PIXELS))
def test_each_kind_of_planner_node_is_drawn_by_slicer(planned, tmp_path, kind):
    ctx, kinds, *_ = planned
    image = render_only(ctx, kinds[kind], tmp_path / f"{kind}.png")
    mask = drawn(image)
    assert mask.sum() >= MIN_PIXELS[kind], f"{kind}: only {mask.sum()} pixels drawn"
    if kind in ("model", "segmentation"):
        # In the node's own display colour (lit shades of it): closer in hue to it than to the other's colour.
        mean = image[mask].astype(float).mean(axis=0)
        own, other = (display_colour(kinds[k][0]) for k in ((kind, "segmentation") if kind == "model"
                                                            else (kind, "model")))
        assert hue_distance(mean, own) < 0.5 * hue_distance(mean, other), (kind, mean, own, other)


def display_colour(node) -> np.ndarray:
    if node.IsA("vtkMRMLSegmentationNode"):
        segmentation = node.GetSegmentation()
        return np.array(segmentation.GetSegment(segmentation.GetNthSegmentID(0)).GetColor())
    return np.array(node.GetDisplayNode().GetColor())


def hue_distance(a, b) -> float:
    """Distance between two colours' chromaticities (brightness removed)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.linalg.norm(a / a.sum() - b / b.sum()))


def test_nodes_are_drawn_where_they_lie(planned, tmp_path):
    """From the front with superior up, in one framing (the bone's box): the proximal endplate and screws above
    the distal ones, the axis vertical and between them."""
    ctx, kinds, nodes, *_ = planned
    box = np.zeros(6)
    kinds["segmentation"][0].GetRASBounds(box)
    frame = box.reshape(3, 2).T

    def rows_of(shown, name):
        return np.nonzero(drawn(render_only(ctx, shown, tmp_path / f"{name}.png", frame_ras=frame)))

    proximal = rows_of([nodes.proximal_endplate], "proximal")[0]
    distal = rows_of([nodes.distal_endplate], "distal")[0]
    assert proximal.size and distal.size and proximal.mean() < distal.mean() - 50
    screws = {end: [s for s in kinds["lines"] if s.GetName().lower().startswith(f"screw {end}")]
              for end in ("proximal", "distal")}
    assert screws["proximal"] and screws["distal"], [s.GetName() for s in kinds["lines"]]
    proximal_screws = rows_of(screws["proximal"], "proximal_screws")[0]
    distal_screws = rows_of(screws["distal"], "distal_screws")[0]
    assert proximal_screws.mean() < distal_screws.mean() - 50
    curve_rows, curve_cols = rows_of(kinds["curve"], "curve")
    assert np.ptp(curve_rows) > 3 * np.ptp(curve_cols)  # a vertical axis
    assert proximal.mean() - 10 < np.median(curve_rows) < distal.mean() + 10


def test_the_render_leaves_the_scene_as_it_was(planned, tmp_path):
    ctx, kinds, *_ = planned
    count = ctx.scene.GetNumberOfNodes()
    views.render_slicer_view(ctx.scene, ctx.app_logic, str(tmp_path / "all.png"))
    assert ctx.scene.GetNumberOfNodes() == count
    assert Image.open(tmp_path / "all.png").size == (1000, 800)


def test_without_the_markups_manager_markups_are_not_drawn(planned, tmp_path, monkeypatch):
    """The check can fail: a view without Slicer's markups displayable manager shows no curve."""
    import slicer

    ctx, kinds, *_ = planned
    factory = slicer.vtkMRMLThreeDViewDisplayableManagerFactory.GetInstance()
    name = "vtkMRMLMarkupsDisplayableManager"
    monkeypatch.setattr(views, "SLICER_3D_MANAGERS", tuple(m for m in views.SLICER_3D_MANAGERS if m != name))
    factory.UnRegisterDisplayableManager(name)
    try:
        with pytest.raises(ValueError, match="Nothing visible"):
            render_only(ctx, kinds["curve"], tmp_path / "curve.png")
    finally:
        factory.RegisterDisplayableManager(name)


def test_the_record_picture_shows_the_plan_as_slicer_does(planned, tmp_path):
    """render_plan_view (the design record's 3D picture) draws the plan's nodes in a scene of its own: the implant
    in its colour, the markups (screws, axis, planes) in Slicer's markups red, the bone around them; the user's
    scene and slicer.mrmlScene are left alone."""
    import slicer

    from PatientImplantPlannerLib.scene.planfolder import IMPLANT_COLOR

    ctx, kinds, _, result, bone_mesh = planned
    count = ctx.scene.GetNumberOfNodes()
    path = views.render_plan_view(result, bone_mesh, str(tmp_path / "record.png"), size=(600, 500), view="anterior")
    assert ctx.scene.GetNumberOfNodes() == count and slicer.mrmlScene is ctx.scene
    image = np.asarray(Image.open(path).convert("RGB")).astype(float)
    mask = drawn(image.astype(np.uint8))
    hue = image / np.maximum(image.sum(axis=2, keepdims=True), 1.0)
    implant = mask & (np.linalg.norm(hue - np.array(IMPLANT_COLOR) / sum(IMPLANT_COLOR), axis=2) < 0.01)
    r, g, b = image[..., 0], image[..., 1], image[..., 2]
    markups_red = mask & (r - g > 60) & (r - b > 60)
    # Translucent bone over the background: still warm (red and green above blue), unlike grey titanium or the
    # bluish-white background.
    bone = mask & (r - b > 12) & (g - b > 6) & ~markups_red
    assert implant.sum() > 2000 and bone.sum() > 2000 and markups_red.sum() > 300, (
        implant.sum(), bone.sum(), markups_red.sum())
