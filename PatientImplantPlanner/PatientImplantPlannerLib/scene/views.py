"""Pictures through Slicer's own 3D view: its displayable managers draw the scene's nodes offscreen, as a user sees
them (models, segmentations, markups), for the design record and the README screenshot."""

import numpy as np

from ..record.render import BACKGROUND_RGB, BONE_RGB, VIEWS, frame_parallel, write_window_png
from ..scene.context import create_headless_context
from ..scene.planfolder import _set_model, apply_to_scene

# The 3D view displayable managers for what the planner puts in the scene (Slicer registers these for its views):
# camera and view settings, models, segmentations (closed surfaces), markups (curve, planes, lines, labels).
SLICER_3D_MANAGERS = ("vtkMRMLCameraDisplayableManager", "vtkMRMLViewDisplayableManager",
                      "vtkMRMLModelDisplayableManager", "vtkMRMLSegmentationsDisplayableManager3D",
                      "vtkMRMLMarkupsDisplayableManager")
SLICER_VIEW_LAYOUT = "PatientImplantPlannerRecord"  # its own view and camera nodes: the user's views stay put


def render_slicer_view(scene, app_logic, path: str, size=(1000, 800), view: str = "anterior-oblique",
                       frame_ras=None, overwrite: bool = False) -> str:
    """Render the visible nodes of ``scene`` as Slicer's 3D view shows them and write a PNG.

    Slicer's own displayable managers draw the nodes offscreen (models, segmentations' closed surfaces, markups
    with their glyphs and labels), so the picture is what a user sees; the camera looks from ``view`` (a key of
    VIEWS) in parallel projection, framed on the visible nodes (or on the box ``frame_ras`` = [lo, hi] RAS, so that
    several pictures share one framing), with a scale bar. Inside Slicer pass
    ``slicer.mrmlScene`` and the application logic; headless a context.PlannerContext's scene and app_logic. A view
    node and camera of its own are added for the render and removed after. Returns ``path``.
    """
    import slicer
    import vtk

    if view not in VIEWS:
        raise ValueError(f"Unknown view {view!r}; choose one of {', '.join(VIEWS)}")
    width, height = int(size[0]), int(size[1])
    factory = slicer.vtkMRMLThreeDViewDisplayableManagerFactory.GetInstance()
    # A singleton Slicer's own views share: its application logic is put back after our managers are made.
    previous_logic = factory.GetMRMLApplicationLogic()
    factory.SetMRMLApplicationLogic(app_logic)
    for name in SLICER_3D_MANAGERS:
        if not factory.IsDisplayableManagerRegistered(name):
            factory.RegisterDisplayableManager(name)
    view_node = scene.AddNewNodeByClass("vtkMRMLViewNode", SLICER_VIEW_LAYOUT)
    view_node.SetLayoutName(SLICER_VIEW_LAYOUT)
    view_node.SetBackgroundColor(*BACKGROUND_RGB)
    view_node.SetBackgroundColor2(*BACKGROUND_RGB)
    view_node.SetBoxVisible(False)
    view_node.SetAxisLabelsVisible(False)
    view_node.SetUseDepthPeeling(True)  # translucent bone with the screws inside it
    renderer = vtk.vtkRenderer()
    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetSize(width, height)
    window.SetMultiSamples(0)  # as render_scene: multisampled offscreen buffers read back black on some drivers
    window.AddRenderer(renderer)
    interactor = vtk.vtkRenderWindowInteractor()  # the markups widgets need one, even never started
    interactor.SetRenderWindow(window)
    group = factory.InstantiateDisplayableManagers(renderer)
    factory.SetMRMLApplicationLogic(previous_logic)
    try:
        group.SetMRMLDisplayableNode(view_node)
        window.Render()  # the managers build their actors; only then are the visible bounds known
        visible = np.array(renderer.ComputeVisiblePropBounds(), dtype=float).reshape(3, 2).T
        if not np.all(np.isfinite(visible)) or np.any(visible[1] < visible[0]):
            raise ValueError("Nothing visible to render in the scene's 3D view.")
        lo_hi = visible if frame_ras is None else np.asarray(frame_ras, dtype=float)
        scale = frame_parallel(renderer.GetActiveCamera(), lo_hi, view, width, height)
        renderer.ResetCameraClippingRange()
        return write_window_png(window, path, scale, overwrite)
    finally:
        group.SetMRMLDisplayableNode(None)
        cameras = scene.GetNodesByClass("vtkMRMLCameraNode")
        for camera in [cameras.GetItemAsObject(i) for i in range(cameras.GetNumberOfItems())]:
            if camera.GetLayoutName() == SLICER_VIEW_LAYOUT:
                scene.RemoveNode(camera)
        scene.RemoveNode(view_node)


def render_plan_view(result, bone_mesh, path: str, size=(1000, 800), view: str = "anterior-oblique",
                     bone_opacity: float = 0.45, overwrite: bool = False) -> str:
    """The plan ``result`` (plan.PlanResult) as the Slicer module shows it: its implant, spinal axis, endplate planes
    and screw lines (the nodes planscene makes) with ``bone_mesh`` (TriMesh, RAS) translucent around them, rendered
    by render_slicer_view in a scene of its own, so it works wherever the plan came from and never touches the
    user's scene. Returns ``path``.
    """
    import slicer
    import vtk

    caller_scene = getattr(slicer, "mrmlScene", None)
    ctx = create_headless_context()
    slicer.mrmlScene = caller_scene  # create_headless_context points slicer.util at its scene: not wanted here
    try:
        nodes = apply_to_scene(ctx, result)
        for line in nodes.screws:  # the screws' names and lengths are in the record's table; seen from the front
            display = line.GetDisplayNode()  # the labels of a left/right pair print over each other
            if display is not None:
                display.SetPropertiesLabelVisibility(False)
        if bone_mesh is not None and len(bone_mesh.faces):
            bone = ctx.scene.AddNewNodeByClass("vtkMRMLModelNode", "Bone")
            _set_model(ctx, bone, bone_mesh, BONE_RGB)
            # Smooth shading as Slicer's segmentation surfaces have (a voxel surface without normals looks faceted).
            normals = vtk.vtkPolyDataNormals()
            normals.SetInputData(bone.GetPolyData())
            normals.SplittingOff()
            normals.ConsistencyOff()  # our meshes are already consistently outward
            normals.Update()
            bone.SetAndObservePolyData(normals.GetOutput())
            bone.GetDisplayNode().SetOpacity(bone_opacity)
        return render_slicer_view(ctx.scene, ctx.app_logic, path, size=size, view=view, overwrite=overwrite)
    finally:
        ctx.scene.Clear(True)
