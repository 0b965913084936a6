"""Design record: pictures checked by pixel statistics and geometry, HTML and PDF checked for content.

Phantom (RAS mm): a bone box x[-15, 15] y[-25, 5] z[-35, 15] and a cylindrical "implant" (radius 6 mm, axis
along z at x=3, y=-7, z[-45, 25]) inside and protruding from it; so the implant lies 3 mm to the patient's right
and 3 mm anterior of the box centre. The CT has the box at 700 HU and two asymmetric 1100 HU markers: one
anterior and superior of the box (seen on the sagittal slice), one on the patient's left and inferior (coronal).
"""

import os
import re
import zlib

import numpy as np
import pytest

from PatientImplantPlannerLib.core.errors import OutputExistsError
from PatientImplantPlannerLib.core.mesh import TriMesh
from PatientImplantPlannerLib.record import render
from PatientImplantPlannerLib.record.checklist import risk_checklist
from PatientImplantPlannerLib.record.report import write_report
from PatientImplantPlannerLib.record.sections import REPORT_SECTIONS

PX_MM = 0.5
BOX_LO, BOX_HI = np.array([-15.0, -25.0, -35.0]), np.array([15.0, 5.0, 15.0])
CYL_X, CYL_Y, CYL_R, CYL_Z = 3.0, -7.0, 6.0, (-45.0, 25.0)
MARKER_A = (np.array([-4.0, 5.0, 5.0]), np.array([4.0, 15.0, 15.0]))  # anterior, superior
MARKER_L = (np.array([-25.0, -14.0, -30.0]), np.array([-15.0, -6.0, -20.0]))  # patient's left, inferior
IJK_TO_RAS = np.array([[-0.8, 0, 0, 40.0], [0, -0.8, 0, 30.0], [0, 0, 1.0, -50.0], [0, 0, 0, 1]])  # LPS-like grid


def box_mesh(lo, hi) -> TriMesh:
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    v = np.array([[(hi if (c >> a) & 1 else lo)[a] for a in range(3)] for c in range(8)])
    faces = [
        [0, 2, 3],
        [0, 3, 1],
        [4, 5, 7],
        [4, 7, 6],
        [0, 1, 5],
        [0, 5, 4],
        [2, 6, 7],
        [2, 7, 3],
        [0, 4, 6],
        [0, 6, 2],
        [1, 3, 7],
        [1, 7, 5],
    ]
    return TriMesh(v, np.array(faces))


def cylinder_mesh(x, y, r, z0, z1, n=64) -> TriMesh:
    a = 2 * np.pi * np.arange(n) / n
    ring = np.stack([x + r * np.cos(a), y + r * np.sin(a)], axis=1)
    v = np.vstack([np.c_[ring, np.full(n, z0)], np.c_[ring, np.full(n, z1)], [[x, y, z0], [x, y, z1]]])
    f = []
    for i in range(n):
        j = (i + 1) % n
        f += [[i, j, n + j], [i, n + j, n + i], [2 * n, j, i], [2 * n + 1, n + i, n + j]]
    return TriMesh(v, np.array(f))


@pytest.fixture(scope="module")
def phantom():
    bone = box_mesh(BOX_LO, BOX_HI)
    implant = cylinder_mesh(CYL_X, CYL_Y, CYL_R, *CYL_Z)
    assert bone.volume() == pytest.approx(30 * 30 * 50)
    assert implant.volume() == pytest.approx(np.pi * 36 * 70, rel=0.01)
    k, j, i = np.mgrid[0:80, 0:100, 0:100]
    ras = np.stack([i, j, k, np.ones_like(i)], axis=-1) @ IJK_TO_RAS.T
    ct = np.zeros((80, 100, 100), np.int16)

    def fill(lo, hi, hu):
        ct[np.all((ras[..., :3] >= lo) & (ras[..., :3] <= hi), axis=-1)] = hu

    fill(BOX_LO, BOX_HI, 700)
    fill(*MARKER_A, 1100)
    fill(*MARKER_L, 1100)
    return bone, implant, ct


@pytest.fixture(scope="module")
def pictures(phantom, tmp_path_factory):
    bone, implant, ct = phantom
    out = tmp_path_factory.mktemp("pictures")
    markers = [  # superior (red), patient's left (blue), anterior (green)
        (box_mesh((-2, -12, 28), (8, -2, 33)), (1, 0, 0), 1.0),
        (box_mesh((-30, -12, -10), (-25, -2, 0)), (0, 0, 1), 1.0),
        (box_mesh((-2, 10, -10), (8, 15, 0)), (0, 1, 0), 1.0),
    ]
    paths = {
        "render_3d": render.render_scene(
            [(bone, render.BONE_RGB, 0.5), (implant, render.TITANIUM_RGB, 1.0)] + markers,
            str(out / "render_3d.png"),
            size=(800, 640),
        )
    }
    outlines = [(implant, render.OUTLINE_IMPLANT_RGB), (bone, render.OUTLINE_BONE_RGB)]
    for plane in ("sagittal", "coronal"):
        paths[f"ct_{plane}"] = render.render_ct_slice_with_outline(
            ct, IJK_TO_RAS, outlines, str(out / f"ct_{plane}.png"), plane=plane
        )
    return paths


def load(path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(int)


def colour_mask(img, rgb01, tol=40) -> np.ndarray:
    return np.all(np.abs(img - np.array(rgb01) * 255) <= tol, axis=-1)


def blobs(mask, min_px=60) -> np.ndarray:
    """Connected blobs of at least min_px pixels (drops anti-aliased edges of text and of other objects)."""
    from scipy import ndimage

    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = ndimage.sum(mask, labels, index=np.arange(1, n + 1))
    return np.isin(labels, 1 + np.nonzero(sizes >= min_px)[0])


def centroid(mask) -> np.ndarray:
    rows, cols = np.nonzero(mask)
    return np.array([cols.mean(), rows.mean()])  # (x, y) in pixels, y down


def bbox(mask) -> np.ndarray:
    rows, cols = np.nonzero(mask)
    return np.array([cols.min(), rows.min(), cols.max(), rows.max()])


# ---- 3D render ---------------------------------------------------------------------------------------------


def test_render_scene_shows_bone_and_implant_in_patient_orientation(pictures):
    img = load(pictures["render_3d"])
    assert img.shape == (640, 800, 3)
    bg = np.array(render.BACKGROUND_RGB) * 255
    foreground = np.abs(img - bg).max(axis=-1) > 30
    assert foreground.mean() > 0.15, "too little drawn"
    spread = img.max(axis=-1) - img.min(axis=-1)
    grey = blobs(foreground & (spread < 15) & (img.mean(axis=-1) < 200))  # titanium, shaded
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    bone = blobs(foreground & (r - b > 20) & (g - b > 10) & (r - g < 30))  # warm ivory (not red/green edges)
    red = (r > 120) & (g < 60) & (b < 60)
    blue = (b > 120) & (r < 60) & (g < 60)
    green = (g > 120) & (r < 60) & (b < 60)
    for name, mask in (("implant grey", grey), ("bone", bone), ("red", red), ("blue", blue), ("green", green)):
        assert mask.sum() > 500, f"{name} pixels missing ({mask.sum()})"
    # The implant protrudes above and below the bone box.
    g, b = bbox(grey), bbox(bone)
    assert g[1] < b[1] - 20 and g[3] > b[3] + 20
    # Superior marker on top; from the front-left the patient's left is on the image right, anterior on the left.
    c_imp = centroid(grey)
    assert centroid(red)[1] < g[1]
    assert centroid(blue)[0] > c_imp[0] + 50
    assert centroid(green)[0] < c_imp[0] - 50
    # Framing: the union of meshes fills most of the picture height (parallel projection fitted to it).
    rows = np.nonzero(foreground.any(axis=1))[0]
    assert rows.max() - rows.min() > 0.75 * img.shape[0]


# ---- CT slices ----------------------------------------------------------------------------------------------


def slice_parts(path):
    img = load(path)
    grey = (img.max(axis=-1) - img.min(axis=-1)) < 6
    v = img[..., 0]
    box_hu = (700 + 350) / 1500 * 255  # bone window: level 400, width 1500
    marker_hu = (1100 + 350) / 1500 * 255
    return {
        "img": img,
        "box": blobs(grey & (np.abs(v - box_hu) < 6)),
        "marker": blobs(grey & (np.abs(v - marker_hu) < 4)),
        "implant": colour_mask(img, render.OUTLINE_IMPLANT_RGB, 30),
        "bone_outline": colour_mask(img, render.OUTLINE_BONE_RGB, 30),
    }


@pytest.mark.parametrize("plane", ["sagittal", "coronal"])
def test_ct_slice_shows_box_and_outlines_at_the_right_place(pictures, plane):
    p = slice_parts(pictures[f"ct_{plane}"])
    # In-plane box size: sagittal shows A-P (30 mm) x S-I (50 mm); coronal R-L (30 mm) x S-I.
    for name in ("box", "bone_outline"):
        b = bbox(p[name])
        assert (b[2] - b[0]) == pytest.approx(30 / PX_MM, abs=4), name
        assert (b[3] - b[1]) == pytest.approx(50 / PX_MM, abs=4), name
    # Bone outline traces the bright box's edges.
    assert np.abs(bbox(p["box"]) - bbox(p["bone_outline"])).max() <= 3
    # Implant outline: the cylinder cut through its axis is a 12 mm x 70 mm rectangle.
    c = bbox(p["implant"])
    assert (c[2] - c[0]) == pytest.approx(2 * CYL_R / PX_MM, abs=3)
    assert (c[3] - c[1]) == pytest.approx(70 / PX_MM, abs=3)
    # Relative to the box: the implant is 3 mm anterior (sagittal: left) and 3 mm to the patient's right
    # (coronal: left); it reaches 10 mm above and below the box.
    box_c = centroid(p["box"] | p["bone_outline"])
    imp_c = (c[:2] + c[2:]) / 2
    assert imp_c[0] - box_c[0] == pytest.approx(-3 / PX_MM, abs=2.5)
    assert imp_c[1] - box_c[1] == pytest.approx(0, abs=2.5)
    b = bbox(p["bone_outline"])
    assert b[1] - c[1] == pytest.approx(10 / PX_MM, abs=3)
    assert c[3] - b[3] == pytest.approx(10 / PX_MM, abs=3)
    # Outline pixels hug the cylinder's edges: none in the middle of the rectangle.
    mid = p["implant"][c[1] + 10 : c[3] - 10, c[0] + 6 : c[2] - 6]
    assert mid.sum() == 0


def test_ct_slice_orientation_with_asymmetric_markers(pictures):
    sag = slice_parts(pictures["ct_sagittal"])
    m, box = centroid(sag["marker"]), centroid(sag["box"])
    assert sag["marker"].sum() == pytest.approx(10 * 10 / PX_MM**2, rel=0.25)  # 10 x 10 mm marker
    assert m[0] < box[0] - 15 / PX_MM  # anterior on the left
    assert m[1] < box[1] - 10 / PX_MM  # superior up
    cor = slice_parts(pictures["ct_coronal"])
    m, box = centroid(cor["marker"]), centroid(cor["box"])
    assert cor["marker"].sum() == pytest.approx(10 * 10 / PX_MM**2, rel=0.25)
    assert m[0] > box[0] + 15 / PX_MM  # patient's left on the image right (radiological)
    assert m[1] > box[1] + 10 / PX_MM  # inferior down


def test_ct_slice_through_a_given_centre_misses_the_implant(phantom, tmp_path):
    bone, implant, ct = phantom
    path = render.render_ct_slice_with_outline(
        ct,
        IJK_TO_RAS,
        [(implant, render.OUTLINE_IMPLANT_RGB)],
        str(tmp_path / "off.png"),
        plane="sagittal",
        center_ras=(12.0, -7.0, -10.0),  # 9 mm right of the cylinder axis: beyond its 6 mm radius
    )
    p = slice_parts(path)
    assert p["implant"].sum() == 0
    assert p["box"].sum() > 1000


def test_render_refuses_to_overwrite(phantom, tmp_path):
    bone, implant, ct = phantom
    path = tmp_path / "slice.png"
    path.write_bytes(b"keep")
    with pytest.raises(OutputExistsError):
        render.render_ct_slice_with_outline(ct, IJK_TO_RAS, [(implant, (0, 1, 1))], str(path))
    assert path.read_bytes() == b"keep"


# ---- report ------------------------------------------------------------------------------------------------


def realistic_record() -> dict:
    files = []
    for name, role, material, variant in [
        ("implant.stl", "implant", "Ti6Al4V ELI", "nominal"),
        ("implant_plus2mm.stl", "implant", "Ti6Al4V ELI", "+2 mm"),
        ("docking_proximal.stl", "docking trial guide", "PA12", ""),
        ("drill_guide_proximal.stl", "drill guide", "PA12", ""),
    ]:
        files.append(
            {
                "file": name,
                "role": role,
                "material": material,
                "size_variant": variant,
                "coordinate_system": "LPS",
                "units": "mm",
                "triangles": 48210,
                "volume_mm3": 14532.5,
                "checks": {"ok": True, "watertight": True, "manifold": True, "outward_normals": True, "problems": []},
                "sha256": "3f9a" + "0123456789abcdef" * 3 + "7e2c5b9d1a4f6e80",
            }
        )
    return {
        "case_id": "UMCU-2024-017",
        "created": "2024-05-02T10:31:00+00:00",
        "software": {"name": "PatientImplantPlanner", "version": "0.1.0", "vtk": "9.6.2"},
        "ct": {
            "path": "/data/case017/ct.nrrd",
            "dimensions": [512, 512, 291],
            "spacing": [0.68, 0.68, 1.0],
            "origin_ras": [174.2, 160.9, -312.0],
            "hu_range": [-1024, 3071],
            "slice_thickness": 1.0,
            "series_note": "Abdomen 1.0 B30f, venous phase",
        },
        "segmentation": {
            "parameters": {
                "threshold_min": 226,
                "threshold_max": 3071,
                "seeds_ras": [[1.5, 20.3, -120.4], [0.8, 22.1, -160.7]],
                "exclude_seeds_ras": [[25.0, 40.0, -140.0]],
                "fill_interior": True,
                "min_island_mm3": 500,
                "smoothing_mm": 0.5,
            },
            "volume_ml": 187.4,
        },
        "levels": {
            "proximal": "L1",
            "distal": "L3",
            "proximal_endplate": {
                "centre": [1.2, 24.0, -118.3],
                "normal": [0.0, 0.12, -0.99],
                "anterior": [0, 1, 0.1],
                "radius_lr": 22.5,
                "radius_ap": 16.0,
            },
            "distal_endplate": {
                "centre": [0.4, 27.9, -187.6],
                "normal": [0.0, -0.05, 1.0],
                "anterior": [0, 1, 0.0],
                "radius_lr": 24.0,
                "radius_ap": 17.1,
            },
        },
        "implant": {
            "parameters": {
                "profile": "circle",
                "diameter_mm": 12.0,
                "width_mm": 10.0,
                "depth_mm": 5.0,
                "corner_radius_mm": 1.0,
                "plate_curvature_radius_mm": 20.0,
                "offset_anterior_mm": 2.0,
                "offset_lateral_mm": 0.0,
                "footplate_fraction": 0.7,
                "footplate_thickness_mm": 3.0,
                "porous_layer_mm": 1.5,
            },
            "measurements": {
                "length_mm": 69.4,
                "cross_section_area_mm2": 113.1,
                "second_moment_mm4": {"min": 1017.9, "max": 1017.9},
                "volume_mm3": 14532.5,
                "mass_g": 64.4,
                "axial_stiffness_ratio": 4.76,
                "bending_stiffness_ratio": 22.66,
                "interference_mm3": 0.04,
            },
            "material": "Ti6Al4V ELI",
        },
        "screws": [
            {
                "name": "P1",
                "end": "proximal",
                "level": "L1",
                "screw_type": "cancellous 6.5 mm fully threaded",
                "diameter_mm": 6.5,
                "length_mm": 45.0,
                "raw_length_mm": 46.3,
                "grade": {"lt130": 0.12, "130to250": 0.38, "gt250": 0.50},
                "breach": False,
                "warnings": [],
                "layout": {"convergence_deg": 25.0, "skew_deg": -30.0, "outward_mm": 1.0},
            },
            {
                "name": "P2",
                "end": "proximal",
                "level": "L1",
                "screw_type": "cancellous 6.5 mm fully threaded",
                "diameter_mm": 6.5,
                "length_mm": 42.5,
                "raw_length_mm": 43.1,
                "grade": {"lt130": 0.20, "130to250": 0.45, "gt250": 0.35},
                "breach": False,
                "warnings": [],
            },
            {
                "name": "D1",
                "end": "distal",
                "level": "L3",
                "screw_type": "cancellous 3.5 mm small fragment",
                "diameter_mm": 3.5,
                "length_mm": 38.0,
                "raw_length_mm": 38.9,
                "grade": {"lt130": 0.61, "130to250": 0.30, "gt250": 0.09},
                "breach": True,
                "warnings": ["tip 1.2 mm outside the anterior cortex"],
            },
        ],
        "variants": [
            {"label": "+2 mm", "extra_mm": 2.0, "length_mm": 71.4, "volume_mm3": 14758.7},
            {"label": "+4 mm", "extra_mm": 4.0, "length_mm": 73.4, "volume_mm3": 14984.9},
        ],
        "lattice": [
            {
                "end": "proximal",
                "kind": "gyroid",
                "target_pore_um": [500, 600],
                "measured_pore_um": 560,
                "target_porosity": 0.70,
                "measured_porosity": 0.694,
                "cell_size_mm": 1.6,
                "layer_mm": 1.5,
            },
            {
                "end": "distal",
                "kind": "gyroid",
                "target_pore_um": 550,
                "measured_pore_um": 430,
                "target_porosity": 0.70,
                "measured_porosity": 0.58,
                "cell_size_mm": 1.6,
                "layer_mm": 1.5,
            },
        ],
        "guides": [
            {
                "name": "docking_proximal",
                "role": "docking",
                "end": "proximal",
                "size_label": "nominal",
                "material": "PA12",
                "volume_mm3": 5230.0,
                "min_wall_mm": 2.0,
                "fit_clearance_mm": 0.2,
                "sleeve_clearance_mm": None,
            },
            {
                "name": "drill_guide_proximal",
                "role": "drill",
                "end": "proximal",
                "size_label": "nominal",
                "material": "PA12",
                "volume_mm3": 3120.0,
                "min_wall_mm": 1.8,
                "fit_clearance_mm": 0.15,
                "sleeve_clearance_mm": 0.1,
            },
        ],
        "files": files,
        "warnings": ["Distal endplate fit from 3 points only: check the docking trial."],
        "coordinate_system": "LPS",
    }


def pdf_pages_and_text(data: bytes) -> tuple:
    pages = len(re.findall(rb"/Type\s*/Page\b", data))
    text = b""
    for m in re.finditer(rb"stream\r?\n(.*?)\r?\nendstream", data, re.S):
        try:
            text += zlib.decompress(m.group(1))
        except zlib.error:
            text += m.group(1)
    return pages, text


def test_report_html_and_pdf_with_this_plans_values(pictures, tmp_path):
    record = realistic_record()
    html_path, pdf_path = write_report(record, pictures, str(tmp_path))
    assert os.path.basename(html_path) == "design_record.html" and os.path.isfile(pdf_path)
    html_text = open(html_path, encoding="utf-8").read()
    for title in REPORT_SECTIONS:
        assert title in html_text, title
    for value in (
        "UMCU-2024-017",
        "42.5",
        "22.7",
        "4.8",
        "512 x 512 x 291",
        "187.4",
        "Ti6Al4V ELI",
        "+4 mm",
        "L1",
        "L3",
        record["files"][0]["sha256"],
        "FE check",
        "4.4 MPa",
        "P1: convergence 25.0 deg, skew -30.0 deg, 1.0 mm towards the rim",  # how the layout aimed the drill
    ):
        assert value in html_text, value
    assert "P2: convergence" not in html_text  # a screw without a layout (placed by hand) is not listed
    assert html_text.count('src="data:image/png;base64,') == 3
    assert ".png" not in html_text.replace("image/png", "")  # pictures embedded, not referenced
    data = open(pdf_path, "rb").read()
    assert data.startswith(b"%PDF")
    pages, text = pdf_pages_and_text(data)
    assert pages >= 2
    assert len(re.findall(rb"/Subtype\s*/Image", data)) >= 3
    for value in (b"UMCU-2024-017", b"42.5", b"22.7", b"Risk checklist"):
        assert value in text, value


def test_drill_lines_through_bone_are_flagged():
    """The checklist reads the plan's drill-line measurement: bone crossed beyond 2 mm is ATTENTION, naming the
    worst line; a record without the measurement (older records) has no such row."""
    record = realistic_record()
    m = record["implant"]["measurements"]
    assert "Drill lines clear of bone" not in {item for item, _, _ in risk_checklist(record)}
    m["drill_line_bone_mm"] = {"P1": 0.0, "P2": 1.5, "D1": 22.5, "D2": 18.0}
    status, text = {item: (s, t) for item, s, t in risk_checklist(record)}["Drill lines clear of bone"]
    assert status == "ATTENTION" and "2 of 4 drill lines" in text and "22 mm" in text
    m["drill_line_bone_mm"] = {"P1": 0.0, "P2": 1.5}
    assert {item: s for item, s, _ in risk_checklist(record)}["Drill lines clear of bone"] == "OK"


def test_risk_statuses_follow_the_record():
    status = {item: s for item, s, _ in risk_checklist(realistic_record())}
    assert status["Screw breach"] == "ATTENTION"  # D1 breaches
    assert status["Screw bone quality"] == "ATTENTION"  # D1: 61 % below 130 HU
    assert status["Porous layer vs target"] == "ATTENTION"  # distal 430 um / 58 %
    assert status["Implant-bone interference"] == "OK"
    assert status["FE check at 500 N axial load"] == "TO DO"
    assert status["Guide fit"] == "OK"
    assert status["Exported files verified"] == "OK"
    good = realistic_record()
    good["screws"] = good["screws"][:2]
    good["lattice"] = good["lattice"][:1]
    good["files"][1]["checks"] = {"ok": False, "problems": ["12 open (boundary) edges: not watertight"]}
    status = {item: s for item, s, _ in risk_checklist(good)}
    assert status["Screw breach"] == "OK" and status["Screw bone quality"] == "OK"
    assert status["Porous layer vs target"] == "OK"
    assert status["Exported files verified"] == "ATTENTION"


def test_report_refuses_overwrite_and_survives_a_sparse_record(tmp_path):
    html_path, pdf_path = write_report({"case_id": "SPARSE-1"}, {}, str(tmp_path))
    before = open(html_path, "rb").read(), open(pdf_path, "rb").read()
    html_text = before[0].decode("utf-8")
    assert "n/a" in html_text and all(t in html_text for t in REPORT_SECTIONS)
    assert before[1].startswith(b"%PDF")
    with pytest.raises(OutputExistsError):
        write_report(realistic_record(), {}, str(tmp_path))
    assert (open(html_path, "rb").read(), open(pdf_path, "rb").read()) == before
    # Only the PDF exists: still refused, and no HTML appears.
    os.remove(html_path)
    with pytest.raises(OutputExistsError):
        write_report(realistic_record(), {}, str(tmp_path))
    assert not os.path.exists(html_path)
    write_report(realistic_record(), {}, str(tmp_path), overwrite=True)
    assert "UMCU-2024-017" in open(html_path, encoding="utf-8").read()


def test_guide_fit_rule_needs_clearance_for_drill_guides_only():
    def status(guides):
        return {item: s for item, s, _ in risk_checklist({"case_id": "X", "guides": guides})}["Guide fit"]

    docking = {"name": "docking", "role": "docking guide", "min_wall_mm": 3.0}
    drill = {"name": "drill", "role": "drill guide", "min_wall_mm": 2.0, "fit_clearance_mm": 0.2}
    assert status([docking, drill]) == "OK"
    assert status([docking, {**drill, "fit_clearance_mm": None}]) == "TO DO"
    assert status([docking, {**drill, "fit_clearance_mm": 0.8}]) == "ATTENTION"


def test_record_text_follows_the_plan_not_stock_phrases(tmp_path):
    """Found in a new-user trial: each screw warning was listed twice, the design considerations asked for an FE
    check the record already held, and the strut offset read 0 / 0 mm for a strut placed 15 / 26 mm off the axis."""
    from PatientImplantPlannerLib.record.checklist import design_considerations
    from PatientImplantPlannerLib.record.sections import _all_warnings

    record = realistic_record()
    record["warnings"] = ["D1: 61 % of the screw is in bone below 130 HU"]
    record["screws"][0]["name"] = "D1"
    record["screws"][0]["warnings"] = ["61 % of the screw is in bone below 130 HU"]
    warnings = _all_warnings(record)
    assert sum("61 % of the screw" in w for w in warnings) == 1
    strength = {row[0]: row for row in design_considerations(record)}["Strength"][2]
    assert "still required" in strength
    record["fe_check"] = {"done": True, "load_N": 500.0, "min_safety_factor_yield": 2.94}
    strength = {row[0]: row for row in design_considerations(record)}["Strength"][2]
    assert "still required" not in strength and "2.94" in strength
    record["implant"]["measurements"].update(strut_offset_anterior_mm=15.1, strut_offset_lateral_mm=26.1)
    html_path, _ = write_report(record, {}, str(tmp_path))
    html_text = open(html_path, encoding="utf-8").read()
    assert "15.1 / 26.1 mm" in html_text
