"""The CT's fine-grained noise (imaging/ctnoise.py): measured from the data, named with a fix that works when it is
high. A new user's RIDER lung CT (a sharp LUNG-kernel series, 41 HU by this measure, 74 HU standard deviation in
muscle) had every default plan refused for reasons that never named the noise ("no recognisable endplate face")."""

import pytest
from conftest import SAMPLE_CT

from PatientImplantPlannerLib.core.errors import PlanError
from PatientImplantPlannerLib.design.plan import Plan, design_implant
from PatientImplantPlannerLib.imaging.ctnoise import NOISY_CT_HU, noise_hu, noisy_ct_note
from PatientImplantPlannerLib.phantoms.spine import make_spine_phantom


@pytest.mark.parametrize("sigma", [0.0, 15.0, 40.0, 60.0])
def test_the_noise_of_a_phantom_is_measured(sigma):
    """The phantom's white noise (its standard deviation) comes back within 10 % (1 HU when there is none)."""
    ph = make_spine_phantom(spacing=1.0, noise_hu=sigma)
    assert noise_hu(ph.array) == pytest.approx(sigma, rel=0.1, abs=1.0)


def test_the_bundled_ct_is_not_called_noisy():
    import SimpleITK as sitk

    ct = sitk.GetArrayFromImage(sitk.ReadImage(SAMPLE_CT))
    measured = noise_hu(ct)
    assert 5.0 < measured < NOISY_CT_HU  # measured 16 HU: a soft reconstruction kernel
    assert noisy_ct_note(ct) == ""


def test_a_noisy_ct_is_named_in_the_warnings_and_in_a_refusal():
    ph = make_spine_phantom(spacing=1.0, noise_hu=60.0)
    plan = Plan(case_id="NOISY", proximal_level="L1", distal_level="L3", placement="anterior",
                proximal_point_ras=list(ph.body_point("L1")), distal_point_ras=list(ph.body_point("L3")))
    result = design_implant(plan, ph.array, ph.ijk_to_ras, ph.bone_mask)
    assert any(w.startswith("The CT is noisy (5") for w in result.warnings)  # 55 HU measured
    # A refusal for another reason still names the noise, with a fix the user can act on.
    far = Plan(case_id="NOISY-2", proximal_level="L1", distal_level="L3", placement="anterior",
               proximal_point_ras=list(ph.body_point("L1") + [0.0, 0.0, 200.0]),
               distal_point_ras=list(ph.body_point("L3")))
    with pytest.raises(PlanError) as err:
        design_implant(far, ph.array, ph.ijk_to_ras, ph.bone_mask)
    assert "The CT is noisy (" in err.value.fix and "soft-tissue or bone kernel" in err.value.fix
    quiet = make_spine_phantom(spacing=1.0, noise_hu=15.0)
    far.proximal_point_ras = list(quiet.body_point("L1") + [0.0, 0.0, 200.0])
    with pytest.raises(PlanError) as err:
        design_implant(far, quiet.array, quiet.ijk_to_ras, quiet.bone_mask)
    assert "noisy" not in err.value.fix
