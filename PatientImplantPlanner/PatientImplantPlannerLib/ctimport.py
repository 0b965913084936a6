"""Load a CT (volume file or DICOM folder) into the scene and check that it is a usable CT in Hounsfield units.

Volume files go through Slicer's own archetype loader, so the geometry is exactly what Slicer shows. A DICOM
folder is first split into series and each series sorted by slice position with SimpleITK (GDCM): the
archetype reader takes a file list as given, and an unsorted list loads silently wrong (measured: a shuffled
list of 20 slices gave 0.42 mm slice spacing instead of 2 mm). The sorted list is then loaded the way Slicer's
DICOM scalar volume plugin does (archetype storage node with the file list) and the result is verified against
the slice positions in the DICOM headers.

Anything added to the scene by a load that fails is removed again, so a failed import leaves the scene as it was.
"""

import os
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .errors import InputFileError, NotCTError
from .progress import Progress, ProgressCallback

VOLUME_EXTENSIONS = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")
ATTR_SOURCE = "PatientImplantPlanner.SourcePath"
ATTR_SERIES_UID = "PatientImplantPlanner.SeriesUID"
ATTR_SERIES_NOTE = "PatientImplantPlanner.SeriesNote"
ATTR_SLICE_THICKNESS = "PatientImplantPlanner.SliceThickness"

# CT in Hounsfield units: air about -1000, fat about -100. Values at or below PADDING_HU are the fill some
# scanners put outside the scan circle (-2048, -3024), never tissue.
PADDING_HU = -1500.0
AIR_HU = -500.0
FAT_HU = (-200.0, -30.0)
MIN_AIR_FRACTION = 1e-4
MIN_FAT_FRACTION = 1e-3
MAX_DIRS_SCANNED = 200


@dataclass
class DicomSeriesInfo:
    series_uid: str
    description: str
    modality: str
    n_files: int
    files: list = field(default_factory=list)  # sorted by slice position


@dataclass
class CTInfo:
    """What was loaded, for reports and the GUI."""

    path: str
    dimensions: tuple
    spacing: tuple
    origin_ras: tuple
    hu_range: tuple
    slice_thickness: float
    series_uid: str = ""
    series_note: str = ""


# ----------------------------------------------------------------------------------------------- DICOM series


def _dicom_header(filename: str):
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileName(filename)
    reader.LoadPrivateTagsOff()
    reader.ReadImageInformation()
    return reader


def _tag(reader, key: str) -> str:
    return reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else ""


def _floats(text: str) -> Optional[np.ndarray]:
    try:
        values = np.array([float(v) for v in text.split("\\")])
    except ValueError:
        return None
    return values if len(values) else None


def list_dicom_series(folder) -> list:
    """The DICOM image series in ``folder``, most files first, each file list sorted by slice position.

    If the folder itself holds no DICOM images its subfolders are searched (CD/PACS exports nest the images a
    few levels down). Empty if there are none.
    """
    import SimpleITK as sitk

    folder = os.fspath(folder)
    groups: dict = {}
    warnings = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # GDCM warns for every folder without DICOM
    try:
        _collect_series(folder, groups)
        if not groups:
            for n_dirs, (dirpath, dirnames, _files) in enumerate(os.walk(folder)):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                if n_dirs >= MAX_DIRS_SCANNED:
                    break
                if dirpath != folder:
                    _collect_series(dirpath, groups)
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warnings)
    series = []
    for uid, lists in groups.items():
        files = lists[0] if len(lists) == 1 else _sort_by_position([f for fs in lists for f in fs])
        first = _dicom_header(files[0])
        series.append(DicomSeriesInfo(uid, _tag(first, "0008|103e"), _tag(first, "0008|0060").upper(),
                                      len(files), files))
    series.sort(key=lambda s: (-s.n_files, s.series_uid))
    return series


def _collect_series(dirpath: str, groups: dict) -> None:
    import SimpleITK as sitk

    for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(dirpath):
        files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(dirpath, uid))
        if files:
            groups.setdefault(uid, []).append(files)


def _sort_by_position(files: list) -> list:
    """Files of one series spread over several folders, sorted along the slice normal."""
    positions, normal, _ = _slice_geometry(files)
    order = np.argsort(positions @ normal, kind="stable")
    return [files[i] for i in order]


def _slice_geometry(files: list):
    """(positions (N, 3) LPS, slice normal, orientation per file (N, 6)) from the headers."""
    positions, orientations = [], []
    for f in files:
        header = _dicom_header(f)
        pos = _floats(_tag(header, "0020|0032"))
        ori = _floats(_tag(header, "0020|0037"))
        if pos is None or len(pos) != 3 or ori is None or len(ori) != 6:
            raise InputFileError(
                f"DICOM file {f} has no valid slice position/orientation (tags 0020,0032 and 0020,0037).",
                "Export the CT series again from the scanner or PACS as standard DICOM images.")
        positions.append(pos)
        orientations.append(ori)
    orientations = np.array(orientations)
    normal = np.cross(orientations[0][:3], orientations[0][3:])
    return np.array(positions), normal / np.linalg.norm(normal), orientations


def choose_series(series: list, series_uid: Optional[str] = None, folder: str = "") -> tuple:
    """The series to load and a note saying which and why (empty when there was only one).

    With ``series_uid`` that series; otherwise the CT series with the most files (scouts and dose reports come
    in small series), or the largest series if none says CT.
    """
    if not series:
        raise InputFileError(f"No DICOM image series found in folder '{folder}'.",
                             "Choose the folder that holds the CT's DICOM files, or a NRRD/NIfTI/MetaImage file.")
    if series_uid:
        for s in series:
            if s.series_uid == series_uid:
                note = "" if len(series) == 1 else (
                    f"folder holds {len(series)} series; took {_uid(s)} ({s.modality or '?'}, "
                    f"{s.n_files} slices): selected by series UID")
                return s, note
        raise InputFileError(f"Series UID '{series_uid}' is not in folder '{folder}'.",
                             "Pick one of the series found there: " + _series_listing(series) + ".")
    cts = [s for s in series if s.modality == "CT"]
    pool = cts or series
    why = "the CT series with the most slices" if 0 < len(cts) < len(series) else "the most slices"
    chosen = max(pool, key=lambda s: s.n_files)
    if len(series) == 1:
        return chosen, ""
    note = (f"folder holds {len(series)} series; took {_uid(chosen)} ({chosen.modality or '?'}, "
            f"{chosen.n_files} slices): {why}")
    return chosen, note


def _uid(s: DicomSeriesInfo) -> str:
    return s.series_uid or "(no series UID)"


def _series_listing(series: list) -> str:
    return "; ".join(f"{_uid(s)} ({s.modality or '?'}, {s.n_files} files, '{s.description}')" for s in series)


def _regular_slices(files: list) -> tuple:
    """Drop files whose orientation differs from the majority (localizers filed in the series), then check that
    the slices are evenly spaced and stacked along their normal. Returns (files, note, positions, normal)."""
    positions, _, orientations = _slice_geometry(files)
    keys = [tuple(np.round(o, 3)) for o in orientations]
    majority = max(set(keys), key=keys.count)
    keep = [i for i, k in enumerate(keys) if k == majority]
    note = ""
    if len(keep) < len(files):
        note = f"dropped {len(files) - len(keep)} file(s) with a different slice orientation (localizer)"
        files = [files[i] for i in keep]
        positions = positions[keep]
    orient = np.array(majority)
    normal = np.cross(orient[:3], orient[3:])
    normal /= np.linalg.norm(normal)
    if len(files) < 2:
        return files, note, positions, normal
    steps = np.diff(positions, axis=0)
    along = steps @ normal
    if np.any(np.abs(along) < 1e-3):
        raise InputFileError(
            "The DICOM series has two or more slices at the same position (several reconstructions or "
            "time points stored under one series UID).",
            "Export a single reconstruction of the CT, or load it in Slicer's DICOM module and save it as NRRD.")
    median = float(np.median(np.abs(along)))
    if np.max(np.abs(np.abs(along) - median)) > 0.1 * median + 0.01:
        raise InputFileError(
            f"The DICOM series has uneven slice spacing ({np.min(np.abs(along)):.2f} to "
            f"{np.max(np.abs(along)):.2f} mm; slices missing?), which would distort the volume.",
            "Export the complete series again, or load it in Slicer's DICOM module, regularize the acquisition "
            "geometry and save it as NRRD.")
    lateral = np.linalg.norm(steps - np.outer(along, normal), axis=1)
    tilt = np.degrees(np.arctan2(np.max(lateral), median))
    if tilt > 0.5:
        raise InputFileError(
            f"The DICOM slices are sheared by {tilt:.1f} deg (gantry tilt); loading them as a box would distort "
            "the anatomy.",
            "Load the series in Slicer's DICOM module with acquisition geometry regularization and save it as NRRD.")
    return files, note, positions, normal


# ------------------------------------------------------------------------------------------------- scene safety


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


# ------------------------------------------------------------------------------------------------------ loading


def _is_volume_file(path: str) -> bool:
    return path.lower().endswith(VOLUME_EXTENSIONS)


def _default_name(path: str) -> str:
    base = os.path.basename(os.path.normpath(path))
    for ext in sorted(VOLUME_EXTENSIONS, key=len, reverse=True):
        if base.lower().endswith(ext):
            return base[: -len(ext)]
    return base


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


def load_ct(ctx, path, name: Optional[str] = None, series_uid: Optional[str] = None, allow_non_ct: bool = False,
            progress: Optional[ProgressCallback] = None):
    """Load a CT volume file or DICOM folder into ``ctx.scene`` and validate it.

    Returns the ``vtkMRMLScalarVolumeNode``. Raises ``InputFileError`` (missing, unreadable, no DICOM, unknown
    series UID, broken slice geometry) or ``NotCTError`` (2D, constant, not Hounsfield units, non-CT DICOM
    modality unless ``allow_non_ct``). After an error the scene holds exactly the nodes it held before.
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
                                 "Choose the CT series (series_uid=...), or pass allow_non_ct=True to use it anyway.")
            node, drop_note = _load_dicom(ctx, series, name or series.description or "CT", prog)
            note = "; ".join(n for n in (note, drop_note) if n)
            node.SetAttribute(ATTR_SERIES_UID, series.series_uid)
            thickness = _floats(_tag(_dicom_header(series.files[0]), "0018|0050"))
            if thickness is not None and thickness[0] > 0:
                node.SetAttribute(ATTR_SLICE_THICKNESS, f"{thickness[0]:g}")
            if note:
                node.SetAttribute(ATTR_SERIES_NOTE, note)
        else:
            prog.report(0.3, f"Reading {os.path.basename(path)}")
            node = _load_file(ctx, path, name or _default_name(path))
        node.SetAttribute(ATTR_SOURCE, path)
        prog.report(0.85, "Checking CT intensities")
        validate_ct(node, allow_non_ct=allow_non_ct)
    except BaseException:
        _remove_new_nodes(ctx.scene, before)
        raise
    prog.report(1.0, f"Loaded {node.GetName()}")
    return node


def _is_dicom_file(path: str) -> bool:
    import SimpleITK as sitk

    try:
        return sitk.ImageFileReader().GetImageIOFromFileName(path) == "GDCMImageIO"
    except RuntimeError:
        return False


# ----------------------------------------------------------------------------------------------- validation


def _voxels(volume_node) -> np.ndarray:
    import vtk.util.numpy_support as ns

    image = volume_node.GetImageData()
    return ns.vtk_to_numpy(image.GetPointData().GetScalars())


def validate_ct(volume_node, allow_non_ct: bool = False) -> None:
    """Raise ``NotCTError`` unless the volume is a 3D, non-constant, single-channel CT in Hounsfield units.

    The HU test looks for air (-1500..-500 HU) or, for small-field reconstructions that lie inside the body, fat
    (-200..-30 HU); padding below -1500 HU (-2048, -3024 outside the scan circle) is ignored. ``allow_non_ct``
    skips only the HU test.
    """
    name = volume_node.GetName() if volume_node is not None else "?"
    image = volume_node.GetImageData() if volume_node is not None else None
    if image is None or image.GetPointData().GetScalars() is None:
        raise NotCTError(f"Volume '{name}' has no voxel data.", "Load the CT again.")
    dims = image.GetDimensions()
    if min(dims) <= 1:
        raise NotCTError(f"Volume '{name}' is {dims[0]}x{dims[1]}x{dims[2]} voxels: a single image, but the planner "
                         "needs a 3D CT volume.", "Load the whole CT series (all slices), not one image.")
    if image.GetNumberOfScalarComponents() != 1:
        raise NotCTError(f"Volume '{name}' has {image.GetNumberOfScalarComponents()} values per voxel (colour or "
                         "vector image), a CT has one.", "Load the grey-value CT.")
    values = _voxels(volume_node)
    if values.size > 20_000_000:  # statistics on a sample are enough and keep big CTs fast
        values = values[:: int(values.size // 10_000_000)]
    if values.dtype.kind == "f" and not np.all(np.isfinite(values)):
        raise NotCTError(f"Volume '{name}' contains NaN or infinite voxel values.",
                         "Replace them with -1024 (air) before loading, e.g. with Slicer's Mask volume module.")
    lo, hi = float(values.min()), float(values.max())
    if lo == hi:
        raise NotCTError(f"Volume '{name}' is empty: every voxel is {lo:g}.", "Load the CT that holds the scan.")
    if allow_non_ct:
        return
    body = values[values > PADDING_HU]
    n = max(body.size, 1)
    air = np.count_nonzero(body < AIR_HU) / n
    fat = np.count_nonzero((body >= FAT_HU[0]) & (body <= FAT_HU[1])) / n
    if air < MIN_AIR_FRACTION and fat < MIN_FAT_FRACTION:
        raise NotCTError(
            f"Volume '{name}' does not look like a CT in Hounsfield units: its values run from {lo:g} to {hi:g}, "
            f"with no air (a CT has air at about -1000 HU) and no fat (about -100 HU). It may be an MR, PET or "
            "a CT stored without its rescale to HU (then air is at 0 and every value needs -1024).",
            "Load the CT in HU, or pass allow_non_ct=True to use this volume anyway (bone thresholds then "
            "have to be set by hand).")


# ------------------------------------------------------------------------------------------------------ report


def describe_ct(volume_node) -> CTInfo:
    """Where the volume came from and its grid, spacing, RAS origin, value range and slice thickness."""
    import vtk

    image = volume_node.GetImageData()
    dims = tuple(image.GetDimensions()) if image is not None else (0, 0, 0)
    spacing = tuple(float(s) for s in volume_node.GetSpacing())
    path = volume_node.GetAttribute(ATTR_SOURCE) or ""
    storage = volume_node.GetStorageNode()
    if not path and storage is not None and storage.GetFileName():
        path = storage.GetFileName()
    hu_range = tuple(float(v) for v in image.GetScalarRange()) if image is not None else (0.0, 0.0)
    thickness = volume_node.GetAttribute(ATTR_SLICE_THICKNESS)
    if thickness:
        slice_thickness = float(thickness)
    else:  # no header value: the spacing of the axis closest to superior-inferior (axial slices)
        directions = vtk.vtkMatrix4x4()
        volume_node.GetIJKToRASDirectionMatrix(directions)
        axis = int(np.argmax([abs(directions.GetElement(2, c)) for c in range(3)]))
        slice_thickness = spacing[axis]
    return CTInfo(
        path=path,
        dimensions=dims,
        spacing=spacing,
        origin_ras=tuple(float(v) for v in volume_node.GetOrigin()),
        hu_range=hu_range,
        slice_thickness=float(slice_thickness),
        series_uid=volume_node.GetAttribute(ATTR_SERIES_UID) or "",
        series_note=volume_node.GetAttribute(ATTR_SERIES_NOTE) or "",
    )
