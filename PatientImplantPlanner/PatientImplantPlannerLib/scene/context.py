"""The MRML scene and the module logics the engine works with.

Inside Slicer, ``context_from_slicer()`` wraps Slicer's own scene and logics. Headless,
``create_headless_context()`` builds the same classes from the ``slicer-core`` wheel: creating the
segmentations logic with the scene registers the segmentation converter rules, and volumes need the
colors logic on the application logic to get a default colour table.
"""

from dataclasses import dataclass
from typing import Any


@dataclass
class PlannerContext:
    scene: Any
    app_logic: Any
    volumes_logic: Any
    segmentations_logic: Any
    markups_logic: Any
    models_logic: Any
    subject_hierarchy_logic: Any = None


def _with_scene(logic, scene, app_logic=None):
    if app_logic is not None and hasattr(logic, "SetMRMLApplicationLogic"):
        logic.SetMRMLApplicationLogic(app_logic)
    logic.SetMRMLScene(scene)
    return logic


def create_headless_context(scene=None) -> PlannerContext:
    """A fresh scene (or the given one) with application and module logics, for headless use."""
    import slicer
    import vtk

    if scene is None:
        scene = slicer.vtkMRMLScene()
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    color_logic = slicer.vtkSlicerColorLogic()
    color_logic.SetMRMLApplicationLogic(app_logic)
    # Adds the built-in colour tables (grey etc.); there are no colour files to find headless, so the
    # error it would print about them is muted.
    warnings = vtk.vtkObject.GetGlobalWarningDisplay()
    vtk.vtkObject.GlobalWarningDisplayOff()
    try:
        color_logic.SetMRMLScene(scene)
    finally:
        vtk.vtkObject.SetGlobalWarningDisplay(warnings)
    app_logic.SetColorLogic(color_logic)
    app_logic.SetModuleLogic("Colors", color_logic)
    # slicer.util array helpers look the scene up here.
    slicer.mrmlScene = scene
    logics = {
        "Volumes": slicer.vtkSlicerVolumesLogic(),
        "Segmentations": slicer.vtkSlicerSegmentationsModuleLogic(),
        "Markups": slicer.vtkSlicerMarkupsLogic(),
        "Models": slicer.vtkSlicerModelsLogic(),
        "SubjectHierarchy": slicer.vtkSlicerSubjectHierarchyModuleLogic(),
    }
    for name, logic in logics.items():
        app_logic.SetModuleLogic(name, logic)
        _with_scene(logic, scene, app_logic)
    ctx = PlannerContext(
        scene=scene,
        app_logic=app_logic,
        volumes_logic=logics["Volumes"],
        segmentations_logic=logics["Segmentations"],
        markups_logic=logics["Markups"],
        models_logic=logics["Models"],
        subject_hierarchy_logic=logics["SubjectHierarchy"],
    )
    ctx._keepalive = [color_logic]  # VTK objects must outlive the scene observers
    return ctx


def context_from_slicer() -> PlannerContext:
    """Slicer's own scene and module logics (inside the Slicer application only)."""
    import slicer

    return PlannerContext(
        scene=slicer.mrmlScene,
        app_logic=slicer.app.applicationLogic(),
        volumes_logic=slicer.modules.volumes.logic(),
        segmentations_logic=slicer.modules.segmentations.logic(),
        markups_logic=slicer.modules.markups.logic(),
        models_logic=slicer.modules.models.logic(),
        subject_hierarchy_logic=slicer.modules.subjecthierarchy.logic(),
    )
