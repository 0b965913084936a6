"""Synthetic spine CT phantom: geometry, intensities, ground truth and the file/scene round trip."""

import numpy as np
import pytest
from scipy import ndimage

from PatientImplantPlannerLib.core.anatomy import distance_to_polyline
from PatientImplantPlannerLib.phantoms.spine import KEEP_OUT_LABELS, make_spine_phantom, mirror_lr_phantom

BONE_HU = 226
FULL = np.ones((3, 3, 3), dtype=bool)  # 26-connectivity: the stricter test of separation


@pytest.fixture(scope="module")
def plain():
    return make_spine_phantom(spacing=1.0)


@pytest.fixture(scope="module")
def kyphotic():
    return make_spine_phantom(spacing=0.8, kyphosis_deg=20.0)


def _components(ph):
    lab, _ = ndimage.label(ph.array > BONE_HU, structure=FULL)
    return lab


def _main_component(lab, mask):
    ids, counts = np.unique(lab[mask & (lab > 0)], return_counts=True)
    return int(ids[np.argmax(counts)]), counts.max() / counts.sum()


def _hu_at(ph, points_ras):
    ijk = ph.ras_to_ijk(points_ras)
    return ndimage.map_coordinates(ph.array.astype(float), ijk[:, ::-1].T, order=1)


def _truth_body_mask(ph, v):
    """Voxels inside the body cylinder, recomputed from the truth fields only."""
    kk, jj, ii = np.indices(ph.array.shape)
    ras = ph.ijk_to_ras_points(np.stack([ii.ravel(), jj.ravel(), kk.ravel()], axis=1)) - v.body_centre
    ep = v.superior_endplate
    w = ras @ v.axis_direction
    a = ras @ ep.anterior
    lat = ras @ ep.lateral
    inside = (np.abs(w) <= v.body_height / 2) & ((a / ep.radius_ap) ** 2 + (lat / ep.radius_lr) ** 2 <= 1)
    return inside.reshape(ph.array.shape)


def test_deterministic_for_a_seed():
    a = make_spine_phantom(spacing=1.0, seed=3)
    b = make_spine_phantom(spacing=1.0, seed=3)
    c = make_spine_phantom(spacing=1.0, seed=4)
    assert a.array.dtype == np.int16
    assert np.array_equal(a.array, b.array)
    assert np.array_equal(a.vertebra_labels, b.vertebra_labels)
    assert not np.array_equal(a.array, c.array)
    # Different noise, same anatomy.
    assert np.array_equal(a.bone_mask, c.bone_mask)


def test_default_size_is_clinical_and_compact():
    ph = make_spine_phantom()
    assert ph.spacing == (0.7, 0.7, 0.7)
    assert 2e6 < ph.array.size < 10e6
    assert [v.name for v in ph.vertebrae] == ["L1", "L2", "L3"]
    assert [v.label for v in ph.vertebrae] == [1, 2, 3]
    assert set(np.unique(ph.vertebra_labels)) == {0, 1, 2, 3}
    body = ph.body_mask
    # Lumbar body ~42 x 32 x 25 mm.
    l2 = ph.vertebra("L2")
    assert 38 < 2 * l2.superior_endplate.radius_lr < 46 and 28 < 2 * l2.superior_endplate.radius_ap < 36
    assert 22 < l2.body_height < 28
    vox = np.prod(ph.spacing)
    assert body.sum() * vox == pytest.approx(3 * np.pi * 21 * 16 * 25, rel=0.1)
    with pytest.raises(KeyError):
        ph.vertebra("L4")


def test_ijk_to_ras_maps_truth_to_the_intended_voxels(plain):
    ph = plain
    m = ph.ijk_to_ras
    # Axial CT layout: i -> left (-R), j -> posterior (-A), k -> superior (+S).
    assert np.allclose(np.diag(m)[:3], [-1.0, -1.0, 1.0])
    for v in ph.vertebrae:
        ijk = np.rint(ph.ras_to_ijk(v.body_centre)[0]).astype(int)
        assert ph.vertebra_labels[ijk[2], ijk[1], ijk[0]] == v.label
        assert 60 < ph.array[ijk[2], ijk[1], ijk[0]] < BONE_HU  # cancellous core
        right, left = ph.ras_to_ijk(v.pedicle_centres)
        assert right[0] < left[0]
        for p in v.pedicle_centres:
            q = np.rint(ph.ras_to_ijk(p)[0]).astype(int)
            assert ph.vertebra_labels[q[2], q[1], q[0]] == v.label
        canal = np.rint(ph.ras_to_ijk(v.canal_centre)[0]).astype(int)
        assert ph.array[canal[2], canal[1], canal[0]] < 60  # CSF
        front = ph.ras_to_ijk(v.body_centre + v.superior_endplate.anterior * 10)[0]
        assert front[1] < ph.ras_to_ijk(v.body_centre)[0][1]  # anterior = smaller j
    # Proximal (L1) is cranial: larger k.
    k = [ph.ras_to_ijk(v.body_centre)[0][2] for v in ph.vertebrae]
    assert k[0] > k[1] > k[2]
    assert np.allclose(ph.vertebrae[0].axis_direction, [0, 0, -1])
    assert np.allclose(ph.vertebrae[0].superior_endplate.normal, [0, 0, 1])


@pytest.mark.parametrize("ext", [".nrrd", ".nii.gz"])
def test_written_file_reloads_with_scene_geometry(ctx, tmp_path, plain, ext):
    from PatientImplantPlannerLib.scene.volumes import array, ijk_to_ras_matrix

    node = plain.add_to_scene(ctx, "direct")
    assert np.allclose(ijk_to_ras_matrix(node), plain.ijk_to_ras)
    assert np.array_equal(array(node), plain.array)
    path = plain.write(str(tmp_path / ("phantom" + ext)))
    loaded = ctx.volumes_logic.AddArchetypeVolume(path, "loaded")
    assert loaded is not None
    assert np.allclose(ijk_to_ras_matrix(loaded), ijk_to_ras_matrix(node), atol=1e-4)
    assert np.array_equal(array(loaded), plain.array)
    labels = plain.add_labels_to_scene(ctx)
    assert np.array_equal(array(labels), plain.vertebra_labels)


def test_threshold_gives_mostly_the_cortical_shell(plain):
    above = plain.array > BONE_HU
    frac = (above & plain.body_mask).sum() / plain.body_mask.sum()
    assert 0.15 < frac < 0.6
    core = ndimage.binary_erosion(plain.body_mask, iterations=3)
    assert (above & core).sum() / core.sum() < 0.05  # osteopenic cancellous bone
    cortex = plain.body_mask & ~ndimage.binary_erosion(plain.body_mask)
    assert np.median(plain.array[cortex]) > 500
    post = plain.bone_mask & ~plain.body_mask
    assert 400 < np.median(plain.array[post]) < 900


def test_vertebrae_are_separate_components_without_vessel(plain):
    lab = _components(plain)
    mains = []
    for v in plain.vertebrae:
        mask = plain.vertebra_labels == v.label
        main, share = _main_component(lab, mask)
        assert share > 0.9
        mains.append(main)
        # The main component holds no other vertebra and nothing outside bone but its partial-volume rim.
        comp = lab == main
        assert not (comp & (plain.vertebra_labels > 0) & ~mask).any()
        rim = ndimage.binary_dilation(mask, structure=FULL, iterations=2)
        assert not (comp & ~rim).any()
    assert len(set(mains)) == len(mains)
    assert not plain.vessel_mask.any() and not plain.table_mask.any()


def test_vessel_joins_bone_and_table_stays_apart():
    ph = make_spine_phantom(spacing=1.0, with_vessel=True, with_table=True, levels=("L2", "L3"))
    assert not (ph.bone_mask & (ph.vessel_mask | ph.table_mask)).any()
    nk = ph.array.shape[0]
    assert ph.vessel_mask.any(axis=(1, 2)).sum() == nk and ph.table_mask.any(axis=(1, 2)).sum() == nk
    inner_vessel = ndimage.binary_erosion(ph.vessel_mask, iterations=2)
    assert 300 < np.median(ph.array[inner_vessel]) < 500
    inner_table = ndimage.binary_erosion(ph.table_mask, iterations=2)
    assert 300 < np.median(ph.array[inner_table]) < 600
    lab = _components(ph)
    vessel_comp, share = _main_component(lab, ph.vessel_mask)
    assert share > 0.99
    for v in ph.vertebrae:
        assert _main_component(lab, ph.vertebra_labels == v.label)[0] == vessel_comp
    table_comp, _ = _main_component(lab, ph.table_mask)
    assert table_comp != vessel_comp
    assert not ((lab == table_comp) & ph.bone_mask).any()
    # >= 5 mm of air between the back and the table top.
    rows = np.flatnonzero(ph.table_mask.any(axis=(0, 2)))
    top = rows.min()
    assert ph.array[:, top - 6 : top - 1, :].max() < -900


def test_kyphosis_bends_the_axis_through_the_bodies(kyphotic):
    ph = kyphotic
    first, last = ph.vertebrae[0], ph.vertebrae[-1]
    cos = np.dot(first.superior_endplate.normal, -last.inferior_endplate.normal)
    assert np.degrees(np.arccos(np.clip(cos, -1, 1))) == pytest.approx(20.0, abs=0.01)
    # Kyphosis is convex posteriorly: the middle body lies behind the line joining the end bodies.
    mid = ph.vertebrae[1].body_centre
    assert mid[1] < (first.body_centre[1] + last.body_centre[1]) / 2 - 1.0
    pts = ph.axis_points
    assert np.linalg.norm(np.diff(pts, axis=0), axis=1).max() <= 1.0
    assert np.allclose(pts[0], first.superior_endplate.centre) and np.allclose(pts[-1], last.inferior_endplate.centre)
    for v in ph.vertebrae:
        for p in (v.body_centre, v.superior_endplate.centre, v.inferior_endplate.centre):
            assert distance_to_polyline(p, pts)[0] < 1e-6
    # The voxels agree with the truth geometry of the tilted bodies.
    for v in ph.vertebrae:
        truth = _truth_body_mask(ph, v)
        body = ph.body_mask & (ph.vertebra_labels == v.label)
        dice = 2 * (truth & body).sum() / (truth.sum() + body.sum())
        assert dice > 0.99
    lab = _components(ph)
    mains = {_main_component(lab, ph.vertebra_labels == v.label)[0] for v in ph.vertebrae}
    assert len(mains) == len(ph.vertebrae)


@pytest.mark.parametrize("which", ["plain", "kyphotic"])
def test_endplate_truth_lies_on_the_body_faces(which, plain, kyphotic):
    ph = {"plain": plain, "kyphotic": kyphotic}[which]
    s = np.linspace(-3.0, 3.0, 121)
    for v in ph.vertebrae:
        for ep in (v.superior_endplate, v.inferior_endplate):
            assert np.dot(ep.normal, ep.centre - v.body_centre) == pytest.approx(v.body_height / 2)
            # Off-centre too: the face is flat over the whole endplate.
            for offset in (np.zeros(3), 0.5 * ep.radius_ap * ep.anterior, -0.5 * ep.radius_lr * ep.lateral):
                hu = _hu_at(ph, ep.centre + offset + s[:, None] * ep.normal)
                assert hu[-1] < 150 and hu[s.searchsorted(-0.5)] > 500  # disc outside, cortex inside
                mid = (hu[-1] + hu.max()) / 2
                peak = int(np.argmax(hu))
                crossing = peak + int(np.argmax(hu[peak:] < mid))
                assert abs(s[crossing]) < 0.5


def test_fov_padding_and_mixed_levels():
    ph = make_spine_phantom(spacing=1.0, levels=("T12", "L1"), pad_outside_fov=-2048, with_table=True)
    nk, nj, ni = ph.array.shape
    assert abs(nj - ni) <= 1
    assert ph.array[:, 0, 0].max() == -2048 and ph.array[:, nj // 2, ni // 2].min() > -1100
    assert ph.array.min() == -2048
    # The torso lies inside the field of view, >= 5 mm from the padding (the table may be cut by it).
    pad = ph.array == -2048
    table = ndimage.binary_dilation(ph.table_mask, iterations=2)
    body = (ph.array > -500) & ~table & ~pad
    assert body.sum() > 0.2 * body.size
    assert ndimage.distance_transform_edt(~pad, sampling=ph.spacing[::-1])[body].min() >= 5.0
    t12, l1 = ph.vertebrae
    assert t12.body_height < l1.body_height
    lab = _components(ph)
    assert _main_component(lab, ph.vertebra_labels == 1)[0] != _main_component(lab, ph.vertebra_labels == 2)[0]


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError, match="Unknown vertebra level"):
        make_spine_phantom(levels=("L1", "S1"))
    with pytest.raises(ValueError, match="per disc"):
        make_spine_phantom(levels=("L1", "L2"), kyphosis_deg=40)
    with pytest.raises(ValueError):
        make_spine_phantom(levels=("L1",), kyphosis_deg=10)


# ---------------------------------------------------------------------------------------- mediastinum, mirror

CHEST_LEVELS = ("T3", "T4", "T5", "T6", "T7", "T8")


@pytest.fixture(scope="module")
def chest():
    return make_spine_phantom(spacing=1.0, levels=CHEST_LEVELS, with_mediastinum=True)


def _at_level(ph, mask, name):
    """RAS points of mask's voxels in the axial slice through the body centre of vertebra ``name``."""
    k = int(round(ph.ras_to_ijk(ph.vertebra(name).body_centre)[0][2]))
    jj, ii = np.nonzero(mask[k])
    return ph.ijk_to_ras_points(np.stack([ii, jj, np.full(len(ii), k)], axis=1))


def _inner_hu(ph, mask):
    return float(np.median(ph.array[ndimage.binary_erosion(mask, iterations=2)]))


def test_mediastinum_lies_where_it_does_in_patients(chest):
    ph = chest
    labels = ph.keepout_labels
    assert set(np.unique(labels)) == {0, *KEEP_OUT_LABELS.values()}
    assert not (labels.astype(bool) & ph.bone_mask).any()
    masks = {name: labels == v for name, v in KEEP_OUT_LABELS.items()}
    assert np.array_equal(ph.vessel_mask, masks["aorta"])
    assert 300 <= _inner_hu(ph, masks["aorta"]) <= 450
    assert 200 <= _inner_hu(ph, masks["heart"]) <= 400
    assert abs(_inner_hu(ph, masks["esophagus"]) - 40) < 15
    assert _inner_hu(ph, masks["trachea"]) < -900
    assert abs(_inner_hu(ph, masks["spinal_cord"]) - 30) < 15
    bone_dist = ndimage.distance_transform_edt(~ph.bone_mask, sampling=ph.spacing[::-1])
    for v in ph.vertebrae:
        c, front = v.body_centre, v.body_centre[1] + v.superior_endplate.radius_ap
        pts = {name: _at_level(ph, m, v.name) for name, m in masks.items()}
        # The descending aorta from T4 down: anterolateral LEFT (R < 0) of the body, touching it.
        if v.name == "T3":
            assert len(pts["aorta"]) == 0
        else:
            aorta = pts["aorta"].mean(axis=0)
            assert aorta[0] < c[0] - 10 and aorta[1] > c[1]
        # The oesophagus just in front of the body, a little to the right; the trachea in front of it down to T4.
        eso = pts["esophagus"].mean(axis=0)
        assert 0 < eso[0] - c[0] < 6 and front < eso[1] < front + 15
        if v.name in ("T3", "T4"):
            assert pts["trachea"].mean(axis=0)[1] > eso[1] + 10
        else:
            assert len(pts["trachea"]) == 0
        # The heart in front of T5-T8, anterior of the oesophagus and the aorta, left of the midline, not on bone.
        if v.name in ("T3", "T4"):
            assert len(pts["heart"]) == 0
        else:
            heart = pts["heart"].mean(axis=0)
            assert heart[1] > eso[1] + 20 and heart[1] > aorta[1] + 10 and heart[0] < c[0]
        # The cord in the canal.
        i, j, k = np.round(ph.ras_to_ijk(v.canal_centre)[0]).astype(int)
        assert labels[k, j, i] == KEEP_OUT_LABELS["spinal_cord"]
    assert bone_dist[masks["heart"]].min() > 10.0
    assert bone_dist[masks["esophagus"]].min() > 1.0
    # The aorta touches the bodies: one component with them at the bone threshold, as in contrast CT.
    lab = _components(ph)
    aorta_comp, share = _main_component(lab, masks["aorta"])
    assert share > 0.99
    assert all(_main_component(lab, ph.vertebra_labels == v.label)[0] == aorta_comp for v in ph.vertebrae[1:])


def test_label_values_follow_totalsegmentator(chest):
    values = chest.vertebra_label_values()
    assert values == {"T3": 41, "T4": 40, "T5": 39, "T6": 38, "T7": 37, "T8": 36}
    anatomy = chest.anatomy_labels()
    for v in chest.vertebrae:
        i, j, k = np.round(chest.ras_to_ijk(v.body_centre)[0]).astype(int)
        assert anatomy[k, j, i] == values[v.name]
        assert np.array_equal(anatomy == values[v.name], chest.vertebra_labels == v.label)
    keep = chest.keepout_labels > 0
    assert np.array_equal(anatomy[keep], chest.keepout_labels[keep])
    # Off by default: the plain phantom has no keep-out structures.
    assert not make_spine_phantom(spacing=1.0, levels=("T6", "T7")).keepout_labels.any()


def test_mirror_lr_flips_voxels_and_truth(chest):
    mirrored = make_spine_phantom(spacing=1.0, levels=CHEST_LEVELS, with_mediastinum=True, mirror_lr=True)
    assert mirrored.info["mirror_lr"] and not chest.info["mirror_lr"]
    assert np.allclose(mirrored.ijk_to_ras, chest.ijk_to_ras)
    for name in ("array", "bone_mask", "vertebra_labels", "vessel_mask", "body_mask", "keepout_labels"):
        assert np.array_equal(getattr(mirrored, name), getattr(chest, name)[:, :, ::-1]), name
    # The grid is symmetric about the spine, so flipping the voxels mirrors the anatomy about x = 0.
    flip = np.array([-1.0, 1.0, 1.0])
    for a, b in zip(chest.vertebrae, mirrored.vertebrae):
        assert np.allclose(b.body_centre, a.body_centre * flip)
        assert np.allclose(b.superior_endplate.normal, a.superior_endplate.normal * flip)
        assert np.allclose(b.pedicle_centres, (a.pedicle_centres * flip)[::-1])
        assert b.pedicle_centres[0][0] > b.pedicle_centres[1][0]  # [right, left]
        for p in b.pedicle_centres:
            i, j, k = np.round(mirrored.ras_to_ijk(p)[0]).astype(int)
            assert mirrored.vertebra_labels[k, j, i] == b.label
        aorta = _at_level(mirrored, mirrored.vessel_mask, b.name)
        if len(aorta):
            assert aorta.mean(axis=0)[0] > b.body_centre[0] + 10  # on the right now
    assert np.allclose(mirrored.axis_points, chest.axis_points * flip)
    assert np.array_equal(mirror_lr_phantom(mirrored).array, chest.array)
