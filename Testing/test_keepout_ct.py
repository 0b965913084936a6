"""Keep-out anatomy found on the CT itself (keepout.from_ct), on a small synthetic torso with known truth: the
contrast-filled vessel grown from an exclude seed (also a seed clicked just outside its wall), the airway that
enters at the top slices (not the air around the patient), and the refusal of a seed far from any blood pool."""

import numpy as np
import pytest

from PatientImplantPlannerLib.core.errors import PlanError
from PatientImplantPlannerLib.imaging.keepout import from_ct

SHAPE = (60, 80, 80)  # k (superior), j (anterior), i (left), 1 mm voxels
VESSEL_CENTRE_JI, VESSEL_RADIUS = (40, 25), 6.0
AIRWAY_CENTRE_JI, AIRWAY_RADIUS = (40, 55), 5.0


def _torso():
    """Soft tissue (40 HU) in an elliptic body surrounded by air; a 300 HU vessel and an air tube run through every
    slice. RAS = (i, j, k) in mm, so k is superior and the top slice is the last."""
    k, j, i = np.indices(SHAPE)
    ct = np.full(SHAPE, -1000, np.int16)
    ct[((j - 40) / 35.0) ** 2 + ((i - 40) / 35.0) ** 2 <= 1.0] = 40
    vessel = (j - VESSEL_CENTRE_JI[0]) ** 2 + (i - VESSEL_CENTRE_JI[1]) ** 2 <= VESSEL_RADIUS ** 2
    airway = (j - AIRWAY_CENTRE_JI[0]) ** 2 + (i - AIRWAY_CENTRE_JI[1]) ** 2 <= AIRWAY_RADIUS ** 2
    ct[vessel] = 300
    ct[airway] = -1000
    return ct, np.eye(4), vessel, airway


def _ras(k, j, i):
    return (float(i), float(j), float(k))


def _structure(ko, name):
    s = next(s for s in ko.structures if s.name == name)
    full = np.zeros(SHAPE, bool)
    full[tuple(slice(o, o + n) for o, n in zip(s.offset, s.mask.shape))] = s.mask
    return full


@pytest.mark.parametrize("seed_ji, where", [(VESSEL_CENTRE_JI, "inside"), ((40, 25 + 7.5), "1.5 mm outside the wall")])
def test_vessel_grown_from_an_exclude_seed(seed_ji, where):
    ct, m, vessel, airway = _torso()
    ko = from_ct(ct, m, np.zeros(SHAPE, bool), [_ras(30, *seed_ji)])
    grown = _structure(ko, "exclude_seed_1_vessel")
    assert np.array_equal(grown, vessel), where  # the whole tube and nothing else (the opening's rim re-added)
    air = _structure(ko, "trachea")
    assert np.array_equal(air, airway)  # the air tube, not the air around the body, which reaches the sides
    assert "aorta / heart" not in ko.not_checked


def test_a_seed_far_from_any_blood_pool_is_refused_and_unseeded_plans_say_what_is_unchecked():
    ct, m, _, _ = _torso()
    with pytest.raises(PlanError, match="not in contrast-filled blood") as err:
        from_ct(ct, m, np.zeros(SHAPE, bool), [_ras(30, 40, 25 + 10)])  # 4 mm outside the wall
    assert "aorta" in err.value.fix
    assert "aorta / heart" in from_ct(ct, m, np.zeros(SHAPE, bool), []).not_checked


def test_an_exclude_seed_in_a_ct_without_contrast_says_so_and_names_fixes_that_exist():
    """Blood without contrast (45 HU, as in the aorta of two 5 mm chest CTs) cannot be grown into a vessel: the
    error gives the CT value and, besides clicking again, the routes that work without contrast."""
    ct, m, vessel, _ = _torso()
    ct[vessel] = 45
    with pytest.raises(PlanError, match=r"the CT there is 45 HU, as blood or soft tissue without contrast") as err:
        from_ct(ct, m, np.zeros(SHAPE, bool), [_ras(30, *VESSEL_CENTRE_JI)])
    fix = err.value.fix
    assert "remove the exclude seeds" in fix and "--keep-out" in fix and "placement_angle_deg" in fix
    with pytest.raises(PlanError, match=r"the CT there is -1000 HU\. ") as err:  # in the air: a slip of the hand
        from_ct(ct, m, np.zeros(SHAPE, bool), [_ras(30, 40, 2)])
    assert "without contrast" not in str(err.value)
