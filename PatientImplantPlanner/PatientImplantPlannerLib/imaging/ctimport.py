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
import struct
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..core.errors import InputFileError, NotCTError, PlanError

VOLUME_EXTENSIONS = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")
ATTR_SOURCE = "PatientImplantPlanner.SourcePath"
ATTR_SERIES_UID = "PatientImplantPlanner.SeriesUID"
ATTR_SERIES_NOTE = "PatientImplantPlanner.SeriesNote"
ATTR_SLICE_THICKNESS = "PatientImplantPlanner.SliceThickness"
ATTR_INPUT_NOTES = "PatientImplantPlanner.InputNotes"  # slice-thickness warnings/acceptance, one per line

# Plausible CT voxels: below 0.05 mm or above 10 mm the header's units or spacing are wrong (not a patient CT).
VOXEL_RANGE_MM = (0.05, 10.0)
# The reference cases used 1 mm slices. Above this the endplates, and so the implant length, are uncertain by about
# a slice (half a slice at each end); above the largest oversized variant the variants cannot absorb it.
THIN_SLICE_MM = 1.25

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
    notes: list = field(default_factory=list)  # input-check warnings (slice thickness), for the record


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
    """The series to load and a note saying which and why (for the summary, the manifest and the record).

    With ``series_uid`` that series; otherwise the CT series with the most files (scouts and dose reports come
    in small series), or the largest series if none says CT.
    """
    if not series:
        raise InputFileError(f"No DICOM image series found in folder '{folder}'.",
                             "Choose the folder that holds the CT's DICOM files, or a NRRD/NIfTI/MetaImage file.")
    if series_uid:
        for s in series:
            if s.series_uid == series_uid:
                return s, _series_note(s, series, "selected by series UID")
        raise InputFileError(f"Series UID '{series_uid}' is not in folder '{folder}'.",
                             "Pick one of the series found there: " + _series_listing(series) + ".")
    cts = [s for s in series if s.modality == "CT"]
    pool = cts or series
    why = "the CT series with the most slices" if 0 < len(cts) < len(series) else "the most slices"
    chosen = max(pool, key=lambda s: s.n_files)
    return chosen, _series_note(chosen, series, why if len(series) > 1 else "the only image series")


def _series_note(chosen: DicomSeriesInfo, series: list, why: str) -> str:
    held = f"folder holds {len(series)} series; " if len(series) > 1 else ""
    return (f"{held}took {_uid(chosen)} ({chosen.modality or '?'}, {chosen.n_files} slices, "
            f"'{chosen.description}'): {why}")


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


# ------------------------------------------------------------------------------------------------ file integrity

_CHUNK = 1 << 22
# NIfTI-1 datatype codes are not needed: bitpix is in the header. NRRD/MetaImage element sizes by type name.
_NRRD_BYTES = {1: ("char", "int8"), 2: ("short", "int16"), 8: ("longlong", "long long", "int64", "double")}
_MET_BYTES = {"CHAR": 1, "UCHAR": 1, "SHORT": 2, "USHORT": 2, "INT": 4, "UINT": 4, "LONG": 4, "ULONG": 4,
              "FLOAT": 4, "LONG_LONG": 8, "ULONG_LONG": 8, "DOUBLE": 8}


def check_file_integrity(path: str) -> None:
    """Refuse a truncated or corrupt NIfTI/NRRD/MetaImage file before it is read: the compressed stream must end
    properly and hold at least the voxel bytes the header announces. (The readers otherwise fill missing slices with
    zeros, which look like soft tissue.) Formats or encodings it does not know are left to the reader."""
    lower = path.lower()
    if lower.endswith((".nii", ".nii.gz")):
        _check_nifti(path)
    elif lower.endswith((".nrrd", ".nhdr")):
        _check_nrrd(path)
    elif lower.endswith((".mha", ".mhd")):
        _check_metaimage(path)


def _damaged(path: str, what: str) -> InputFileError:
    return InputFileError(
        f"'{path}' is damaged: {what}. It would load with missing slices read as 0 HU.",
        "Copy or export the CT again (an interrupted download or copy truncates the file), then retry.")


def _stream_length(path: str, offset: int, codec: str) -> int:
    """Bytes in the file after ``offset``, decompressed with ``codec`` ('raw', 'gzip', 'bzip2', 'zlib') to the end
    of its stream; InputFileError if the stream is cut short or corrupt."""
    import bz2
    import gzip
    import zlib

    if codec == "raw":
        return max(os.path.getsize(path) - offset, 0)
    total = 0
    with open(path, "rb") as raw:
        raw.seek(offset)
        try:
            if codec == "zlib":
                d = zlib.decompressobj()
                while chunk := raw.read(_CHUNK):
                    total += len(d.decompress(chunk))
                total += len(d.flush())
                if not d.eof:
                    raise EOFError("compressed data ended before the end-of-stream marker")
            else:
                opener = gzip.GzipFile if codec == "gzip" else bz2.BZ2File
                with opener(fileobj=raw, mode="rb") as f:
                    while chunk := f.read(_CHUNK):
                        total += len(chunk)
        except (EOFError, OSError, zlib.error) as exc:
            raise _damaged(path, f"its compressed data is incomplete or corrupt ({exc})") from None
    return total


def _require_bytes(path: str, have: int, need: int, dims) -> None:
    if have < need:
        shape = " x ".join(str(int(d)) for d in dims)
        raise _damaged(path, f"the header announces {shape} voxels ({need:,} bytes of data) but the file holds "
                             f"{have:,} bytes ({100.0 * have / max(need, 1):.0f} %)")


def _check_nifti(path: str) -> None:
    import gzip

    opener = gzip.open if path.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            header = f.read(540)
    except (EOFError, OSError) as exc:
        raise _damaged(path, f"its header cannot be read ({exc})") from None
    for endian in "<>":
        if len(header) >= 4 and struct.unpack(endian + "i", header[:4])[0] in (348, 540):
            break
    else:
        raise _damaged(path, "it has no NIfTI header")
    if struct.unpack(endian + "i", header[:4])[0] == 348:
        dims = struct.unpack(endian + "8h", header[40:56])
        bitpix = struct.unpack(endian + "h", header[72:74])[0]
        offset = int(struct.unpack(endian + "f", header[108:112])[0])
    else:
        if len(header) < 540:
            raise _damaged(path, "its NIfTI-2 header is incomplete")
        bitpix = struct.unpack(endian + "h", header[14:16])[0]
        dims = struct.unpack(endian + "8q", header[16:80])
        offset = struct.unpack(endian + "q", header[168:176])[0]
    n = max(min(int(dims[0]), 7), 0)
    shape = [max(int(d), 1) for d in dims[1 : n + 1]]
    need = max(offset, 0) + int(np.prod(shape, dtype=np.int64)) * max(int(bitpix), 8) // 8
    have = _stream_length(path, 0, "gzip" if path.lower().endswith(".gz") else "raw")
    _require_bytes(path, have, need, shape)


def _text_header(path: str, stop) -> tuple:
    """(lines, byte offset after the header) of a text header ending at the first line where ``stop(line)``."""
    lines, offset = [], 0
    with open(path, "rb") as f:
        for raw in f:
            offset += len(raw)
            line = raw.decode("latin-1").rstrip("\r\n")
            if stop(line) or offset > 1 << 20:
                lines.append(line)
                break
            lines.append(line)
    return lines, offset


@dataclass
class NrrdLayout:
    """Where an NRRD file's voxel bytes are: ``data_path`` from byte ``offset``, encoded with ``codec`` ('raw' or
    'gzip'/'bzip2'), ``sizes`` (fastest axis first) of ``item_size`` bytes, and the header ``fields``."""

    data_path: str
    offset: int
    codec: str
    sizes: list
    item_size: int
    fields: dict

    @property
    def n_bytes(self) -> int:
        return int(np.prod(self.sizes, dtype=np.int64)) * self.item_size


def nrrd_layout(path: str) -> Optional[NrrdLayout]:
    """The data layout of an NRRD header, or None for encodings, skips and file lists left to the reader.
    InputFileError for a header that is not NRRD, has no valid sizes, or names a data file that is missing."""
    lines, offset = _text_header(path, lambda line: line == "")
    if not lines or not lines[0].startswith("NRRD"):
        raise _damaged(path, "it has no NRRD header")
    fields = {}
    for line in lines[1:]:
        if ":" in line and not line.startswith("#") and ":=" not in line:
            key, value = line.split(":", 1)
            fields[key.strip().lower()] = value.strip()
    try:
        sizes = [int(v) for v in fields["sizes"].split()]
    except (KeyError, ValueError):
        raise _damaged(path, "its header has no valid 'sizes' field") from None
    kind = fields.get("type", "").lower()
    size = next((n for n, names in _NRRD_BYTES.items() if any(name in kind for name in names)), 4)
    encoding = fields.get("encoding", "raw").lower()
    codec = {"raw": "raw", "gzip": "gzip", "gz": "gzip", "bzip2": "bzip2", "bz2": "bzip2"}.get(encoding)
    data_file = fields.get("data file") or fields.get("datafile")
    skips = ("line skip", "lineskip", "byte skip", "byteskip")
    if codec is None or any(k in fields for k in skips) or (data_file and " " in data_file.strip()):
        return None  # text/hex encodings, skips and file lists: left to the reader
    if data_file:
        path, offset = os.path.join(os.path.dirname(path), data_file.strip()), 0
        if not os.path.isfile(path):
            raise InputFileError(f"The NRRD header names a data file '{data_file}' that does not exist.",
                                 "Keep the .nhdr file and its data file together in one folder.")
    return NrrdLayout(path, offset, codec, sizes, size, fields)


def _check_nrrd(path: str) -> None:
    layout = nrrd_layout(path)
    if layout is not None:
        _require_bytes(layout.data_path, _stream_length(layout.data_path, layout.offset, layout.codec),
                       layout.n_bytes, layout.sizes)


def _check_metaimage(path: str) -> None:
    lines, offset = _text_header(path, lambda line: line.replace(" ", "").lower().startswith("elementdatafile="))
    fields = {}
    for line in lines:
        if "=" in line:
            key, value = line.split("=", 1)
            fields[key.strip().lower()] = value.strip()
    try:
        dims = [int(v) for v in fields["dimsize"].split()]
        size = _MET_BYTES[fields["elementtype"].upper().replace("MET_", "")]
        channels = int(fields.get("elementnumberofchannels", "1"))
    except (KeyError, ValueError):
        raise _damaged(path, "its MetaImage header has no valid DimSize/ElementType") from None
    data_file = fields.get("elementdatafile", "")
    if data_file.upper() != "LOCAL":
        if " " in data_file or data_file.upper().startswith("LIST"):
            return  # slice lists: left to the reader
        path, offset = os.path.join(os.path.dirname(path), data_file), 0
        if not os.path.isfile(path):
            raise InputFileError(f"The MetaImage header names a data file '{data_file}' that does not exist.",
                                 "Keep the .mhd file and its data file together in one folder.")
    codec = "zlib" if fields.get("compresseddata", "false").lower() == "true" else "raw"
    need = int(np.prod(dims, dtype=np.int64)) * size * channels
    _require_bytes(path, _stream_length(path, offset, codec), need, dims)


# --------------------------------------------------------------------------------------------- geometry checks


def check_geometry(volume_node, max_slice_mm: Optional[float] = None, accept_thick_slices: bool = False) -> list:
    """Refuse implausible voxel sizes; warn about slices thicker than THIN_SLICE_MM with the implant-length
    uncertainty they imply; refuse (PlanError) slices thicker than ``max_slice_mm`` (the plan's largest oversized
    variant) unless ``accept_thick_slices``. Returns the notes for the record (warning or acceptance)."""
    spacing = [float(v) for v in volume_node.GetSpacing()]
    name = volume_node.GetName()
    lo, hi = VOXEL_RANGE_MM
    if not all(np.isfinite(v) and lo <= v <= hi for v in spacing):
        raise NotCTError(
            f"Volume '{name}' has voxels of {_mm(spacing)} mm: outside {lo:g}-{hi:g} mm, so its spacing (or unit) in "
            "the header is wrong or this is not a patient CT.",
            "Fix the spacing in the file header (Slicer: Volumes module > Volume information), or export the CT "
            "again from the scanner or PACS.")
    thickness = round(_slice_mm(volume_node), 3)  # DICOM positions give 1.2500000000000007 for 1.25 mm slices
    if thickness <= THIN_SLICE_MM:
        return []
    uncertainty = (f"the endplates are located to about +/-{thickness / 2:.1f} mm each, so the implant length is "
                   f"uncertain by up to {thickness:.1f} mm")
    if max_slice_mm is not None and thickness > max_slice_mm:
        variant = f"the largest oversized variant (+{max_slice_mm:g} mm)" if max_slice_mm > 0 else "no variant"
        if not accept_thick_slices:
            raise PlanError(
                f"The CT's slice thickness is {thickness:.2f} mm, more than {variant}: {uncertainty}, which the "
                "oversized variants cannot absorb.",
                "Use a CT reconstructed with thinner slices (1 mm, as the reference cases), add a larger variant "
                "(the plan's variants_mm), or pass --accept-thick-slices to plan with it anyway (the design record "
                "states it).")
        return [f"CT slice thickness {thickness:.2f} mm is more than {variant}; accepted by the user "
                f"(--accept-thick-slices): {uncertainty}."]
    return [f"CT slice thickness {thickness:.2f} mm is above {THIN_SLICE_MM:g} mm: {uncertainty}."]


def _slice_mm(volume_node) -> float:
    """The thicker of the header's slice thickness and the spacing along superior-inferior (the axis the implant
    length is measured along). (Not through describe_ct: its HU range makes VTK scan every voxel, ~1 s.)"""
    spacing = [float(s) for s in volume_node.GetSpacing()]
    return max(_slice_thickness(volume_node, spacing), spacing[_si_axis(volume_node)])


def _si_axis(volume_node) -> int:
    """The voxel axis closest to superior-inferior."""
    import vtk

    directions = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASDirectionMatrix(directions)
    return int(np.argmax([abs(directions.GetElement(2, c)) for c in range(3)]))


def _slice_thickness(volume_node, spacing) -> float:
    """The header's slice thickness, or without one the spacing of the axis closest to superior-inferior."""
    thickness = volume_node.GetAttribute(ATTR_SLICE_THICKNESS)
    return float(thickness) if thickness else float(spacing[_si_axis(volume_node)])


def _mm(values) -> str:
    return " x ".join(f"{v:g}" for v in values)


def check_points_inside(volume_node, points) -> None:
    """PlanError naming the input (e.g. "proximal point (proximal_point_ras)") for a point outside the volume.
    ``points``: [(label, (R, A, S))]."""
    import vtk

    ras_to_ijk = vtk.vtkMatrix4x4()
    volume_node.GetRASToIJKMatrix(ras_to_ijk)
    m = np.array([[ras_to_ijk.GetElement(r, c) for c in range(4)] for r in range(4)])
    dims = np.array(volume_node.GetImageData().GetDimensions(), dtype=float)
    bounds = [0.0] * 6
    volume_node.GetRASBounds(bounds)
    for label, p in points:
        ijk = m[:3, :3] @ np.asarray(p, dtype=float) + m[:3, 3]
        if np.any(ijk < -0.5) or np.any(ijk > dims - 0.5):
            span = ", ".join(f"{axis} {bounds[2 * i]:.0f} to {bounds[2 * i + 1]:.0f}" for i, axis in enumerate("RAS"))
            raise PlanError(
                f"The {label} at ({', '.join(f'{v:g}' for v in p)}) RAS lies outside the CT volume ({span} mm).",
                f"Correct the {label}: RAS millimetres as Slicer shows them (not LPS or voxel indices), inside "
                "this CT.")


# ------------------------------------------------------------------------------------------------- scene safety


# ------------------------------------------------------------------------------------------------------ loading


def _is_volume_file(path: str) -> bool:
    return path.lower().endswith(VOLUME_EXTENSIONS)


def _default_name(path: str) -> str:
    base = os.path.basename(os.path.normpath(path))
    for ext in sorted(VOLUME_EXTENSIONS, key=len, reverse=True):
        if base.lower().endswith(ext):
            return base[: -len(ext)]
    return base


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


AXIS_NAMES = ("left-right", "front-back", "superior-inferior")


def stacked_along(ijk_to_ras) -> str:
    """Which patient direction the voxel array's slowest axis (k, the slices) runs closest to."""
    m = np.asarray(ijk_to_ras, float)[:3, :3]
    return AXIS_NAMES[int(np.argmax(np.abs(m[:, 2]) / np.linalg.norm(m[:, 2])))]


def require_axial_storage(ijk_to_ras, what: str = "The CT", error=PlanError) -> None:
    """Refuse a volume stored in sagittal or coronal slices: the bone fill and the levels work on axial slices (the
    array's k axis). On the bundled lumbar CT stored in sagittal slices the demo plan came out with 9 mm instead of
    18 mm footplates and one screw per end. ``load_ct`` re-orders such files; a node loaded otherwise is refused."""
    along = stacked_along(ijk_to_ras)
    if along != AXIS_NAMES[2]:
        raise error(
            f"{what} is stored in {'sagittal' if along == AXIS_NAMES[0] else 'coronal'} slices (its slices are "
            f"stacked {along}); the planner works on axial slices.",
            "Load the CT file with the module's 'Load CT' (or the implant-planner command line), which re-orders "
            "the slices to axial with every voxel in its place, or resample it in Slicer: Orient Scalar Volume "
            "(Converters), orientation Axial, and select the new volume.")


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
            "Load the CT in HU, or pass --allow-non-ct to use this volume anyway (allow_non_ct=True in Python; "
            "bone thresholds then have to be set by hand).")


# ------------------------------------------------------------------------------------------------------ report


def describe_ct(volume_node) -> CTInfo:
    """Where the volume came from and its grid, spacing, RAS origin, value range and slice thickness."""
    image = volume_node.GetImageData()
    dims = tuple(image.GetDimensions()) if image is not None else (0, 0, 0)
    spacing = tuple(float(s) for s in volume_node.GetSpacing())
    path = volume_node.GetAttribute(ATTR_SOURCE) or ""
    storage = volume_node.GetStorageNode()
    if not path and storage is not None and storage.GetFileName():
        path = storage.GetFileName()
    hu_range = tuple(float(v) for v in image.GetScalarRange()) if image is not None else (0.0, 0.0)
    slice_thickness = _slice_thickness(volume_node, spacing)
    return CTInfo(
        path=path,
        dimensions=dims,
        spacing=spacing,
        origin_ras=tuple(float(v) for v in volume_node.GetOrigin()),
        hu_range=hu_range,
        slice_thickness=float(slice_thickness),
        series_uid=volume_node.GetAttribute(ATTR_SERIES_UID) or "",
        series_note=volume_node.GetAttribute(ATTR_SERIES_NOTE) or "",
        notes=input_notes(volume_node),
    )


def input_notes(volume_node) -> list:
    """The warnings ``load_ct`` kept on the volume (slice thickness and its length uncertainty, or its acceptance)."""
    text = volume_node.GetAttribute(ATTR_INPUT_NOTES) or ""
    return [line for line in text.splitlines() if line]
