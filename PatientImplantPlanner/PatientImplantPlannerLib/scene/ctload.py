"""Loading a CT file or DICOM series into the scene as a volume node, checked before anything else uses it; a failed
load leaves the scene as it was (the file and DICOM checks themselves are in imaging/ctimport.py)."""

import os
from typing import Optional

import numpy as np

from ..core.errors import InputFileError, NotCTError
from ..core.progress import Progress, ProgressCallback
from ..imaging.ctimport import (
    ATTR_INPUT_NOTES,
    ATTR_SERIES_NOTE,
    ATTR_SERIES_UID,
    ATTR_SLICE_THICKNESS,
    ATTR_SOURCE,
    AXIS_NAMES,
    DicomSeriesInfo,
    _default_name,
    _dicom_header,
    _floats,
    _is_dicom_file,
    _is_volume_file,
    _regular_slices,
    _si_axis,
    _tag,
    _uid,
    check_file_integrity,
    check_geometry,
    check_points_inside,
    choose_series,
    list_dicom_series,
    stacked_along,
    validate_ct,
)
from ..imaging.nrrdread import auto_window_range, read_nrrd
from .volumes import array, ijk_to_ras_matrix


def _node_ids(scene) -> list:
    return [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())]


def _remove_new_nodes(scene, before: list) -> None:
    known = set(before)
    for node_id in reversed(_node_ids(scene)):
        if node_id not in known:
            node = scene.GetNodeByID(node_id)
            if node is not None:
                scene.RemoveNode(node)


class _QuietVTK:
    """Mute VTK's console errors during a load: the reasons are collected and put into our own message."""

    def __enter__(self):
        import vtk

        self._was = vtk.vtkObject.GetGlobalWarningDisplay()
        vtk.vtkObject.GlobalWarningDisplayOff()

    def __exit__(self, *exc):
        import vtk

        vtk.vtkObject.SetGlobalWarningDisplay(self._was)
        return False


def _load_file(ctx, path: str, name: str):
    import slicer

    messages = slicer.vtkMRMLMessageCollection()
    with _QuietVTK():
        node = ctx.volumes_logic.AddArchetypeVolume(path, name, 0, None, messages)
    if node is None:
        details = messages.GetAllMessagesAsString().strip().splitlines() if messages.GetNumberOfMessages() else []
        reason = next((line.lstrip("- ") for line in details if "exception" in line.lower()), "")
        raise InputFileError(
            f"Cannot read '{path}' as a volume: the file is damaged or not in a supported format."
            + (f" ({reason[:200]})" if reason else ""),
            "Use a CT saved as NRRD (.nrrd/.nhdr), NIfTI (.nii/.nii.gz), MetaImage (.mha/.mhd), or a DICOM folder.")
    if not node.IsA("vtkMRMLScalarVolumeNode") or node.IsA("vtkMRMLLabelMapVolumeNode"):
        raise NotCTError(f"'{path}' loads as a {node.GetClassName()}, not a single-channel scalar volume.",
                         "Load a grey-value CT (one value per voxel, in Hounsfield units).")
    return node


def _node_from_voxels(ctx, path: str, name: str, volume):
    """A scalar volume node holding ``volume`` (imaging.nrrdread.FastVolume) without a copy, set up as the archetype
    loader sets it up: unique name, display node with the grey colour table and automatic window/level, an archetype
    storage node pointing at the file, the same IJK-to-RAS matrix and scalar array name."""
    import slicer
    import vtk
    from vtk.util.numpy_support import get_vtk_array_type, numpy_to_vtk

    voxels = volume.voxels
    scalars = numpy_to_vtk(voxels.reshape(-1), deep=False, array_type=get_vtk_array_type(voxels.dtype))
    scalars._sitk_image = volume.image  # owns the buffer: lives as long as the VTK array
    scalars.SetName("ImageScalars")
    image = vtk.vtkImageData()
    image.SetDimensions(voxels.shape[2], voxels.shape[1], voxels.shape[0])
    image.GetPointData().SetScalars(scalars)
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(volume.ijk_to_ras[r, c]))
    window = auto_window_range(voxels)
    display = slicer.vtkMRMLScalarVolumeDisplayNode()
    if window is not None:
        display.SetAutoWindowLevel(0)  # computed below with numpy, not by VTK on connecting
    ctx.scene.AddNode(display)
    display.SetDefaultColorMap()
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(path)
    ctx.scene.AddNode(storage)
    node = slicer.vtkMRMLScalarVolumeNode()
    node.SetName(ctx.scene.GenerateUniqueName(name))  # as the archetype loader names it
    node.SetIJKToRASMatrix(matrix)
    node.SetAndObserveImageData(image)
    ctx.scene.AddNode(node)
    node.SetAndObserveStorageNodeID(storage.GetID())
    # Connecting the display node makes it compute the automatic window/level: VTK's scalar range (element by
    # element, ~1 s on 100 M voxels) and a histogram. For integer CTs the same two numbers come from numpy
    # (auto_window_range, same definition) and automatic window/level is switched back on without recomputing;
    # the display node recomputes (the same values) on its next modification, as it always does.
    node.SetAndObserveDisplayNodeID(display.GetID())
    if window is not None:
        display.SetWindowLevelMinMax(*window)
        was_disabled = display.GetDisableModifiedEvent()
        display.SetDisableModifiedEvent(1)
        display.SetAutoWindowLevel(1)
        display.SetDisableModifiedEvent(was_disabled)
    return node


def _load_dicom(ctx, series: DicomSeriesInfo, name: str, progress: Progress):
    import vtk

    files, drop_note, positions, _normal = _regular_slices(series.files)
    progress.report(0.5, f"Reading {len(files)} DICOM slices")
    file_list = vtk.vtkStringArray()
    for f in files:
        file_list.InsertNextValue(f)
    with _QuietVTK():
        node = ctx.volumes_logic.AddArchetypeScalarVolume(files[0], name, 0, file_list)
    if node is None or node.GetImageData() is None:
        raise InputFileError(f"Cannot read the DICOM series {_uid(series)} ({len(files)} files).",
                             "Check that the files are complete CT images, or export the series again.")
    if len(files) > 1 and not _grid_matches_headers(node, positions):
        raise InputFileError(
            f"The DICOM series {_uid(series)} loaded with a geometry that does not match its slice headers.",
            "Load it in Slicer's DICOM module and save it as NRRD, then load the NRRD file.")
    return node, drop_note


def _grid_matches_headers(node, positions: np.ndarray) -> bool:
    """One voxel layer per slice, voxel k=0 at one end of the stack and the k axis stepping slice by slice to
    the other end (the reader may stack the list either way round). ``positions`` are the slices' LPS positions
    in file-list order."""
    import vtk

    ijk_to_ras = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(ijk_to_ras)
    m = np.array([[ijk_to_ras.GetElement(r, c) for c in range(4)] for r in range(4)])
    ras = positions * np.array([-1.0, -1.0, 1.0])
    step = (ras[-1] - ras[0]) / (len(ras) - 1)
    if node.GetImageData().GetDimensions()[2] != len(ras):
        return False
    tolerance = 1e-3 * (1.0 + np.linalg.norm(step))
    return any(np.linalg.norm(m[:3, 3] - start) < 1e-2 and np.linalg.norm(m[:3, 2] - k) < tolerance
               for start, k in ((ras[0], step), (ras[-1], -step)))


def _reorder_to_axial(node) -> str:
    """A CT stored in sagittal or coronal slices re-ordered in place to axial slices (every voxel keeps its
    position; the engine's slice-wise steps work on axial slices). Returns the note for the record, or ""."""
    import slicer.util
    import vtk

    m = ijk_to_ras_matrix(node)
    along = stacked_along(m)
    if along == AXIS_NAMES[2]:
        return ""
    si = _si_axis(node)
    order = [a for a in range(3) if a != si] + [si]  # new (i, j, k) from old axes
    voxels = np.ascontiguousarray(np.transpose(array(node), [2 - a for a in order[::-1]]))
    new = vtk.vtkMatrix4x4()
    for r in range(3):
        for c in range(3):
            new.SetElement(r, c, float(m[r, order[c]]))
        new.SetElement(r, 3, float(m[r, 3]))
    node.SetIJKToRASMatrix(new)
    slicer.util.updateVolumeFromArray(node, voxels)
    # A DICOM header's slice thickness is that of the stored slices, which no longer run along the axis.
    node.RemoveAttribute(ATTR_SLICE_THICKNESS)
    return (f"The CT was stored in {'sagittal' if along == AXIS_NAMES[0] else 'coronal'} slices: re-ordered to axial "
            "slices on loading (every voxel in its place).")


def load_ct(ctx, path, name: Optional[str] = None, series_uid: Optional[str] = None, allow_non_ct: bool = False,
            progress: Optional[ProgressCallback] = None, max_slice_mm: Optional[float] = None,
            accept_thick_slices: bool = False, points=()):
    """Load a CT volume file or DICOM folder into ``ctx.scene`` and validate it.

    Returns the ``vtkMRMLScalarVolumeNode``. Raises ``InputFileError`` (missing, truncated, unreadable, no DICOM,
    unknown series UID, broken slice geometry), ``NotCTError`` (2D, constant, implausible voxel size, not Hounsfield
    units, non-CT DICOM modality unless ``allow_non_ct``) or ``PlanError`` (slices thicker than ``max_slice_mm``
    unless ``accept_thick_slices``; one of ``points`` [(label, RAS)] outside the volume). Slice-thickness warnings
    are kept on the node (``input_notes``). After an error the scene holds exactly the nodes it held before.
    """
    prog = progress if isinstance(progress, Progress) else Progress(progress)
    path = os.path.abspath(os.path.expanduser(os.fspath(path))) if path not in (None, "") else ""
    if not path or not os.path.exists(path):
        raise InputFileError(f"CT path '{path}' does not exist.",
                             "Check the path, or choose the CT file or DICOM folder again.")
    prog.report(0.0, f"Checking {os.path.basename(path)}")
    before = _node_ids(ctx.scene)
    try:
        series, note = None, ""
        if os.path.isdir(path):
            prog.report(0.05, "Reading DICOM headers")
            series, note = choose_series(list_dicom_series(path), series_uid, path)
        elif not _is_volume_file(path) and _is_dicom_file(path):
            # A single DICOM file picked: load the series it belongs to.
            found = list_dicom_series(os.path.dirname(path))
            own = [s for s in found if any(os.path.samefile(f, path) for f in s.files)]
            series, note = choose_series(found if series_uid else (own or found), series_uid, os.path.dirname(path))
        if series is not None:
            if series.modality and series.modality != "CT" and not allow_non_ct:
                raise NotCTError(f"DICOM series {_uid(series)} is {series.modality}, not CT.",
                                 "Choose the CT series (--series-uid), or pass --allow-non-ct to use it anyway "
                                 "(allow_non_ct=True in Python).")
            node, drop_note = _load_dicom(ctx, series, name or series.description or "CT", prog)
            note = "; ".join(n for n in (note, drop_note) if n)
            node.SetAttribute(ATTR_SERIES_UID, series.series_uid)
            thickness = _floats(_tag(_dicom_header(series.files[0]), "0018|0050"))
            if thickness is not None and thickness[0] > 0:
                node.SetAttribute(ATTR_SLICE_THICKNESS, f"{thickness[0]:g}")
            if note:
                node.SetAttribute(ATTR_SERIES_NOTE, note)
        else:
            prog.report(0.1, f"Checking {os.path.basename(path)} is complete")
            # NRRD files that the fast reader reads with the archetype loader's geometry and proves complete (it
            # returns None otherwise): no second decompression for the check, no copy, no VTK range pass.
            fast = read_nrrd(path)
            if fast is None:
                check_file_integrity(path)
            prog.report(0.3, f"Reading {os.path.basename(path)}")
            if fast is not None:
                node = _node_from_voxels(ctx, path, name or _default_name(path), fast)
                del fast
            else:
                node = _load_file(ctx, path, name or _default_name(path))
        node.SetAttribute(ATTR_SOURCE, path)
        prog.report(0.85, "Checking CT geometry and intensities")
        validate_ct(node, allow_non_ct=allow_non_ct)
        reordered = _reorder_to_axial(node)
        notes = check_geometry(node, max_slice_mm, accept_thick_slices) + ([reordered] if reordered else [])
        check_points_inside(node, points)
        if notes:
            node.SetAttribute(ATTR_INPUT_NOTES, "\n".join(notes))
    except BaseException:
        _remove_new_nodes(ctx.scene, before)
        raise
    prog.report(1.0, f"Loaded {node.GetName()}")
    return node
