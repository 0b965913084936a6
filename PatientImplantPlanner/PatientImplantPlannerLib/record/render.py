"""Pictures for the design record: an offscreen 3D render of bone + implant, and CT slices with mesh outlines.

``render_slicer_view`` renders scene nodes through Slicer's own 3D displayable managers (the look of Slicer's 3D
view); ``render_scene`` renders engine meshes with plain VTK. Both work headless (VTK offscreen through EGL or
OSMesa for 3D; numpy/scipy/Pillow for the CT slices) and write PNG files. Orientation follows radiology
conventions so a reviewer reads them without a legend: superior up; sagittal slices with anterior on the image
left; coronal slices with the patient's right on the image left; the 3D view from the patient's front-left by
default.
"""

from typing import Sequence

import numpy as np

from ..core.mesh import TriMesh, atomic_write_bytes, to_polydata

# Colours (0-1 RGB). Surface colours for 3D; outline colours chosen to stand out on a grey CT slice.
BONE_RGB = (0.93, 0.87, 0.72)
TITANIUM_RGB = (0.62, 0.64, 0.67)
SCREW_RGB = (0.80, 0.66, 0.25)
GUIDE_RGB = (0.35, 0.55, 0.85)
BACKGROUND_RGB = (0.97, 0.97, 0.98)
FRAME_RGB = (40, 40, 40)  # border around CT slices (0-255), holds orientation letters and the scale bar
OUTLINE_IMPLANT_RGB = (0.0, 0.9, 1.0)
OUTLINE_BONE_RGB = (1.0, 0.85, 0.0)
OUTLINE_SCREW_RGB = (1.0, 0.3, 0.3)

# Camera directions (from the focal point towards the camera, RAS) for the named 3D views; superior is up.
VIEWS = {
    "anterior-oblique": (-1.0, 1.0, 0.0),  # from the patient's front-left
    "anterior": (0.0, 1.0, 0.0),
    "posterior": (0.0, -1.0, 0.0),
    "left": (-1.0, 0.0, 0.0),
    "right": (1.0, 0.0, 0.0),
    "posterior-oblique": (-1.0, -1.0, 0.0),  # from the patient's back-left
}

# Slice planes: (image-right axis, image-up axis) in RAS. Sagittal: anterior on the left, so moving right on
# the image goes posterior (-A). Coronal: the patient's right on the image left, so moving right goes to -R.
SLICE_AXES = {
    "sagittal": (np.array([0.0, -1.0, 0.0]), np.array([0.0, 0.0, 1.0])),
    "coronal": (np.array([-1.0, 0.0, 0.0]), np.array([0.0, 0.0, 1.0])),
    "axial": (np.array([-1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])),
}
SLICE_LABELS = {"sagittal": ("A", "P"), "coronal": ("R", "L"), "axial": ("R", "L")}  # (image left, image right)
SLICE_TOP_BOTTOM = {"sagittal": ("S", "I"), "coronal": ("S", "I"), "axial": ("A", "P")}
OVERLAY_ALPHA = 0.45  # keep-out structures tint the CT this much


def _rgb01(rgb) -> tuple:
    """Accept 0-1 floats or 0-255 integers."""
    c = np.asarray(rgb, dtype=float)[:3]
    if c.max() > 1.0:
        c = c / 255.0
    return tuple(float(x) for x in np.clip(c, 0.0, 1.0))


def _unpack(item) -> tuple:
    """(mesh, rgb01, opacity) from a (mesh, rgb[, opacity]) tuple."""
    mesh, rgb = item[0], item[1]
    opacity = float(item[2]) if len(item) > 2 and item[2] is not None else 1.0
    return mesh, _rgb01(rgb), opacity


def _nonempty(meshes: Sequence) -> list:
    out = [_unpack(m) for m in meshes]
    return [m for m in out if m[0] is not None and len(m[0].faces) > 0]


def _union_bounds(meshes: list) -> np.ndarray:
    b = np.array([m[0].bounds() for m in meshes])
    return np.array([b[:, 0].min(axis=0), b[:, 1].max(axis=0)])


def _png_bytes(rgb_uint8: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb_uint8), "RGB").save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def _nice_length(max_mm: float) -> float:
    """Largest 1/2/5 x 10^n length not above max_mm (for scale bars)."""
    if max_mm <= 0:
        return 1.0
    exp = np.floor(np.log10(max_mm))
    for f in (5.0, 2.0, 1.0):
        if f * 10**exp <= max_mm:
            return float(f * 10**exp)
    return float(10**exp)


def _draw_scale_bar(draw, px_per_mm: float, width: int, height: int, colour) -> None:
    """A 1/2/5 x 10^n mm bar of about a fifth of the width, bottom left."""
    length_mm = _nice_length(0.2 * width / px_per_mm)
    length_px = length_mm * px_per_mm
    x0, y0 = 20, height - 24
    draw.line([(x0, y0), (x0 + length_px, y0)], fill=colour, width=3)
    for x in (x0, x0 + length_px):
        draw.line([(x, y0 - 6), (x, y0 + 6)], fill=colour, width=2)
    draw.text((x0, y0 - 10), f"{length_mm:g} mm", fill=colour, font=_font(max(12, height // 45)), anchor="lb")


# ---- 3D render -------------------------------------------------------------------------------------------


def render_scene(
    meshes: list, path: str, size=(1000, 800), view: str = "anterior-oblique", overwrite: bool = False
) -> str:
    """Render meshes offscreen and write a PNG.

    ``meshes``: [(TriMesh in RAS mm, rgb (0-1 or 0-255), opacity)], e.g. bone (BONE_RGB, 0.5-1.0), implant
    (TITANIUM_RGB), screws. The parallel-projection camera looks from ``view`` (a key of VIEWS) with superior up
    and is framed on all meshes; a scale bar is drawn (exact in parallel projection). Returns ``path``.
    """
    import vtk

    items = _nonempty(meshes)
    if not items:
        raise ValueError("render_scene needs at least one non-empty mesh")
    if view not in VIEWS:
        raise ValueError(f"Unknown view {view!r}; choose one of {', '.join(VIEWS)}")
    width, height = int(size[0]), int(size[1])

    renderer = vtk.vtkRenderer()
    renderer.SetBackground(*BACKGROUND_RGB)
    translucent = False
    for mesh, rgb, opacity in items:
        normals = vtk.vtkPolyDataNormals()
        normals.SetInputData(to_polydata(mesh))
        normals.SetFeatureAngle(60.0)  # crisp box edges, smooth cylinders
        normals.ConsistencyOff()  # our meshes are already consistently outward
        mapper = vtk.vtkPolyDataMapper()
        mapper.SetInputConnection(normals.GetOutputPort())
        mapper.ScalarVisibilityOff()
        actor = vtk.vtkActor()
        actor.SetMapper(mapper)
        prop = actor.GetProperty()
        prop.SetColor(*rgb)
        prop.SetOpacity(opacity)
        prop.SetAmbient(0.15)
        prop.SetDiffuse(0.8)
        prop.SetSpecular(0.1)
        prop.SetSpecularPower(30.0)
        translucent = translucent or opacity < 1.0
        renderer.AddActor(actor)

    light_kit = vtk.vtkLightKit()
    light_kit.AddLightsToRenderer(renderer)

    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetSize(width, height)
    window.AddRenderer(renderer)
    window.SetMultiSamples(0)  # FXAA smooths edges; multisampled offscreen buffers read back black on some drivers
    if translucent:  # correct see-through bone needs depth peeling
        window.SetAlphaBitPlanes(1)
        renderer.SetUseDepthPeeling(1)
        renderer.SetMaximumNumberOfPeels(12)
        renderer.SetOcclusionRatio(0.0)
    renderer.UseFXAAOn()

    scale = frame_parallel(renderer.GetActiveCamera(), _union_bounds(items), view, width, height)
    renderer.ResetCameraClippingRange()
    return write_window_png(window, path, scale, overwrite)


def frame_parallel(camera, bounds: np.ndarray, view: str, width: int, height: int) -> float:
    """Point ``camera`` from ``view`` (superior up) in parallel projection framed on ``bounds`` ([lo, hi] RAS, the
    box corners projected onto the view plane); returns the parallel scale (half the image height in mm)."""
    centre = bounds.mean(axis=0)
    toward_camera = np.asarray(VIEWS[view], dtype=float)
    toward_camera /= np.linalg.norm(toward_camera)
    up = np.array([0.0, 0.0, 1.0])
    right = np.cross(-toward_camera, up)
    corners = np.array([[x, y, z] for x in bounds[:, 0] for y in bounds[:, 1] for z in bounds[:, 2]]) - centre
    half_w = np.abs(corners @ right).max()
    half_h = np.abs(corners @ up).max()
    radius = float(np.linalg.norm(bounds[1] - bounds[0])) / 2 + 1.0
    scale = 1.08 * max(half_h, half_w * height / width, 1.0)
    camera.SetFocalPoint(*centre)
    camera.SetPosition(*(centre + toward_camera * (3 * radius + 50.0)))
    camera.SetViewUp(*up)
    camera.ParallelProjectionOn()
    camera.SetParallelScale(scale)
    return scale


def write_window_png(window, path: str, scale: float, overwrite: bool) -> str:
    """Render ``window``, read it back and write it as a PNG with a scale bar (exact in parallel projection)."""
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy

    window.Render()
    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.SetInputBufferTypeToRGB()
    grab.ReadFrontBufferOff()
    grab.Update()
    image = grab.GetOutput()
    w, h, _ = image.GetDimensions()
    pixels = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(h, w, -1)[::-1, :, :3].copy()
    window.Finalize()

    from PIL import Image, ImageDraw

    pil = Image.fromarray(pixels, "RGB")
    _draw_scale_bar(ImageDraw.Draw(pil), h / (2 * scale), w, h, colour=(60, 60, 60))
    atomic_write_bytes(path, _png_bytes(np.asarray(pil)), overwrite=overwrite)
    return path


# ---- Slicer's own 3D view --------------------------------------------------------------------------------


# ---- CT slice with outlines ------------------------------------------------------------------------------


def mesh_plane_segments(mesh: TriMesh, origin, normal) -> np.ndarray:
    """Intersection of a triangle mesh with a plane as line segments (S, 2, 3), RAS.

    Vertices exactly on the plane are nudged to one side so every crossing edge is counted once.
    """
    normal = np.asarray(normal, dtype=float)
    normal = normal / np.linalg.norm(normal)
    d = (mesh.vertices - np.asarray(origin, dtype=float)) @ normal
    d = np.where(np.abs(d) < 1e-9, 1e-9, d)
    tri_d = d[mesh.faces]  # (M, 3)
    above = tri_d > 0
    crossing = above.any(axis=1) & ~above.all(axis=1)
    faces = mesh.faces[crossing]
    td = tri_d[crossing]
    ab = above[crossing]
    if len(faces) == 0:
        return np.zeros((0, 2, 3))
    # The vertex alone on its side is the apex; the segment joins the points on its two edges.
    lone_is_above = ab.sum(axis=1) == 1
    apex = np.where(lone_is_above, np.argmax(ab, axis=1), np.argmin(ab, axis=1))
    rows = np.arange(len(faces))
    ends = []
    for step in (1, 2):
        other = (apex + step) % 3
        va, vb = mesh.vertices[faces[rows, apex]], mesh.vertices[faces[rows, other]]
        da, db = td[rows, apex], td[rows, other]
        t = (da / (da - db))[:, None]
        ends.append(va + t * (vb - va))
    return np.stack(ends, axis=1)


def _ct_region(ct_shape, ijk_to_ras: np.ndarray, centre: np.ndarray, u: np.ndarray, v: np.ndarray, items, margin):
    """In-plane rectangle (umin, umax, vmin, vmax) relative to the centre: the CT's extent, narrowed to the
    meshes' bounds plus a margin when meshes are given (keeps the picture on the implant and its bones)."""
    nk, nj, ni = ct_shape
    corners_ijk = np.array([[i, j, k] for i in (-0.5, ni - 0.5) for j in (-0.5, nj - 0.5) for k in (-0.5, nk - 0.5)])
    corners = corners_ijk @ ijk_to_ras[:3, :3].T + ijk_to_ras[:3, 3] - centre
    cu, cv = corners @ u, corners @ v
    region = [cu.min(), cu.max(), cv.min(), cv.max()]
    if items:
        b = _union_bounds(items)
        mc = np.array([[x, y, z] for x in b[:, 0] for y in b[:, 1] for z in b[:, 2]]) - centre
        mu, mv = mc @ u, mc @ v
        region = [
            max(region[0], mu.min() - margin),
            min(region[1], mu.max() + margin),
            max(region[2], mv.min() - margin),
            min(region[3], mv.max() + margin),
        ]
    if region[1] <= region[0] or region[3] <= region[2]:
        raise ValueError("The meshes do not overlap the CT in this plane; check that both are in RAS mm.")
    return region


def render_ct_slice_with_outline(
    ct_array: np.ndarray,
    ijk_to_ras,
    meshes: list,
    path: str,
    plane: str = "sagittal",
    center_ras=None,
    window=(400, 1500),
    pixel_mm: float = 0.5,
    margin_mm: float = 40.0,
    overwrite: bool = False,
    overlays=(),
) -> str:
    """Reformat a sagittal, coronal or axial CT slice and draw each mesh's intersection contour on it; write a PNG.
    ``overlays``: [(bool crop [k, j, i], crop origin (k, j, i), rgb)] tint the voxels of labelled structures.

    ``ct_array`` is indexed [k, j, i]; ``ijk_to_ras`` is its 4x4 matrix. ``meshes``: [(TriMesh RAS, rgb[, _])]
    with the implant FIRST: the slice goes through ``center_ras``, by default the centre of the first mesh's
    bounding box. ``window`` = (level, width) in HU (bone window by default). The picture covers the CT within
    ``margin_mm`` of the meshes, at ``pixel_mm`` per pixel, superior up; sagittal with anterior on the left,
    coronal with the patient's right on the left (radiological convention). Returns ``path``.
    """
    from PIL import Image, ImageDraw
    from scipy.ndimage import map_coordinates

    if plane not in SLICE_AXES:
        raise ValueError(f"plane must be one of {', '.join(SLICE_AXES)}, not {plane!r}")
    ct = np.asarray(ct_array)
    if ct.ndim != 3:
        raise ValueError(f"ct_array must be 3-D [k, j, i], got shape {ct.shape}")
    m = np.asarray(ijk_to_ras, dtype=float)
    items = _nonempty(meshes)
    if center_ras is not None:
        centre = np.asarray(center_ras, dtype=float)
    elif items:
        centre = items[0][0].bounds().mean(axis=0)
    else:
        mid = (np.array(ct.shape[::-1], dtype=float) - 1) / 2  # (i, j, k) of the volume centre
        centre = m[:3, :3] @ mid + m[:3, 3]
    u, v = SLICE_AXES[plane]
    normal = np.cross(u, v)
    umin, umax, vmin, vmax = _ct_region(ct.shape, m, centre, u, v, items, margin_mm)

    # Pixel (row, col) centre -> RAS; row 0 at the top (largest v).
    ncols = max(1, int(np.ceil((umax - umin) / pixel_mm)))
    nrows = max(1, int(np.ceil((vmax - vmin) / pixel_mm)))
    cols = umin + (np.arange(ncols) + 0.5) * pixel_mm
    rows = vmax - (np.arange(nrows) + 0.5) * pixel_mm
    ras = centre + cols[None, :, None] * u + rows[:, None, None] * v  # (nrows, ncols, 3)
    inv = np.linalg.inv(m)
    ijk = ras.reshape(-1, 3) @ inv[:3, :3].T + inv[:3, 3]
    air = min(-1024.0, float(ct.min())) if ct.size else -1024.0
    hu = map_coordinates(ct, [ijk[:, 2], ijk[:, 1], ijk[:, 0]], order=1, mode="constant", cval=air, output=np.float32)
    level, width = float(window[0]), float(window[1])
    grey = np.clip((hu.reshape(nrows, ncols) - (level - width / 2)) / max(width, 1e-6) * 255.0, 0, 255)
    rgb_img = np.repeat(grey[:, :, None], 3, axis=2)
    kji = np.rint(ijk[:, ::-1]).astype(np.int64)
    for crop, offset, colour in overlays:
        local = kji - np.asarray(offset)
        ok = np.all((local >= 0) & (local < np.array(crop.shape)), axis=1)
        hit = np.zeros(len(kji), dtype=bool)
        hit[ok] = crop[local[ok, 0], local[ok, 1], local[ok, 2]]
        hit = hit.reshape(nrows, ncols)
        tint = np.array([255 * c for c in _rgb01(colour)], dtype=np.float32)
        rgb_img[hit] = (1 - OVERLAY_ALPHA) * rgb_img[hit] + OVERLAY_ALPHA * tint
    pil = Image.fromarray(rgb_img.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(pil)

    def to_px(points):
        rel = points - centre
        return np.stack([(rel @ u - umin) / pixel_mm, (vmax - rel @ v) / pixel_mm], axis=-1)

    line_w = max(2, int(round(0.6 / pixel_mm)))
    for mesh, rgb, _ in items:
        colour = tuple(int(round(255 * c)) for c in rgb)
        for a, b in to_px(mesh_plane_segments(mesh, centre, normal)):
            draw.line([tuple(a), tuple(b)], fill=colour, width=line_w)

    # Orientation letters and a scale bar in a dark frame around the slice, so they never hide anatomy.
    font_px = max(14, min(nrows, ncols) // 25)
    pad = font_px + 10
    framed = Image.new("RGB", (ncols + 2 * pad, nrows + 3 * pad), FRAME_RGB)  # bottom: letter, then scale
    framed.paste(pil, (pad, pad))
    draw = ImageDraw.Draw(framed)
    font = _font(font_px)
    left, right = SLICE_LABELS[plane]
    fw, fh = framed.size
    draw.text((pad / 2, pad + nrows / 2), left, fill=(255, 255, 255), font=font, anchor="mm")
    draw.text((fw - pad / 2, pad + nrows / 2), right, fill=(255, 255, 255), font=font, anchor="mm")
    top, bottom = SLICE_TOP_BOTTOM[plane]
    draw.text((fw / 2, pad / 2), top, fill=(255, 255, 255), font=font, anchor="mm")
    draw.text((fw / 2, nrows + 1.5 * pad), bottom, fill=(255, 255, 255), font=font, anchor="mm")
    length_mm = _nice_length(0.25 * ncols * pixel_mm)
    x0, y0 = pad, fh - pad / 2
    draw.line([(x0, y0), (x0 + length_mm / pixel_mm, y0)], fill=(255, 255, 255), width=3)
    draw.text(
        (x0 + length_mm / pixel_mm + 6, y0), f"{length_mm:g} mm", fill=(255, 255, 255), font=_font(12), anchor="lm"
    )
    pil = framed
    atomic_write_bytes(path, _png_bytes(np.asarray(pil)), overwrite=overwrite)
    return path


