"""Randomised plausible phantom plans (issue 7 point 8): at least 90 % give a plan, and every refusal names a setting
that exists. A smaller, coarser deterministic sample than bench/bench_robustness.py (200 cases, 0.5-1.5 mm)."""

import collections

import pytest
from robustness import CERVICOTHORACIC, fix_names_settings, random_case, run_case, setting_names

CASES = range(1000, 1040)  # seeds: the sample is the same on every run
# Issue 7 asks for 90 % of plausible plans. A strut replaces at least one vertebral body, so the figure is taken over
# the strut requests (docking levels 2-4 apart: 30 of the 40 here); the 10 adjacent-level requests (a disc only) must
# be refused, naming the fix "dock one level further": footplates 1-3 mm apart leave no line along which a screw
# through one could be drilled or driven without going through the other footplate and the next vertebra.
# Measured on this sample (2026-11-30): strut plans 27 of 30 (90.0 %) before footplates could widen sideways
# (design/placement.fit_footplates), 29 of 30 (96.7 %) since; the one refusal left (seed 1013: a 13.7 mm strut on
# the axis with 6.5 mm screws, T8 footplate 1.1 mm from the aorta) names real fixes.
TARGET = 0.90


def test_fix_check_tells_real_settings_from_invented_ones():
    names = setting_names()
    assert fix_names_settings("Raise implant.footplate_fraction (up to 1.0) or --clearance.", names)[0]
    assert fix_names_settings("Set keep_out_clearance_mm lower.", names)[0]
    assert not fix_names_settings("Use thinner footplates.", names)[0]  # names no setting
    assert not fix_names_settings("Set implant.footplate_size_mm.", names)[0]  # no such key
    assert not fix_names_settings("Run with --smaller-screws.", names)[0]  # no such option


@pytest.mark.slow
def test_most_random_plans_succeed_and_refusals_name_real_fixes():
    names = setting_names()
    outcomes = [run_case(random_case(seed, min_spacing=1.0), names) for seed in CASES]
    crashes = [o.message for o in outcomes if o.status == "crash"]
    assert not crashes
    refused = [o for o in outcomes if o.status == "refused"]
    bad = [(o.case.seed, o.fix_why, o.message) for o in refused if not o.fix_ok]
    assert not bad
    struts = [o for o in outcomes if not o.case.disc_only]
    planned = sum(o.status == "plan" for o in struts)
    reasons = collections.Counter(o.reason for o in refused)
    print(f"strut plans {planned} of {len(struts)}; refused: "
          f"{[(o.case.seed, o.reason) for o in struts if o.status != 'plan']}; adjacent-level requests "
          f"{sum(o.case.disc_only for o in outcomes)}, planned "
          f"{sum(o.case.disc_only and o.status == 'plan' for o in outcomes)}")
    assert len(struts) >= 25
    assert planned >= TARGET * len(struts), (planned, len(struts), reasons)
    for o in outcomes:
        if o.case.disc_only and o.status == "refused":
            assert "dock one level further" in o.message, o.message


CERVICAL_CASES = range(2000, 2015)


@pytest.mark.slow
def test_cervicothoracic_plans_stay_in_front_and_refusals_name_real_fixes():
    """Random plans docking at C3-T4 (the reference cases' other region), 0.6-1.2 mm voxels: the automatic side at a
    cervical docking level stays within 20 deg of anterior (on the placement the plan was built with), every refusal
    names settings that exist, and most strut requests give a plan. Measured (2026-12-02), on 30 draws (2000-2029):
    strut plans 20 of 25, the 5 refused all struts on the axis (no 3.5 mm screw beside them even on the whole
    endplate, or the canal); on these 15: 13 of 15."""
    names = setting_names()
    outcomes = [run_case(random_case(seed, max_spacing=1.2, min_spacing=0.6, spine=CERVICOTHORACIC), names)
                for seed in CERVICAL_CASES]
    assert not [o.message for o in outcomes if o.status == "crash"]
    assert not [(o.case.seed, o.fix_why, o.message) for o in outcomes if o.status == "refused" and not o.fix_ok]
    cervical = [o for o in outcomes if o.status == "plan" and o.case.proximal.startswith("C")]
    automatic = [o for o in cervical if o.placement.get("how") == "automatic"]
    assert len(automatic) >= 3
    assert all(abs(o.placement["angle_deg"]) <= 20.0 for o in automatic), [o.placement for o in automatic]
    fixed_beyond = [o for o in cervical if o.placement.get("angle_deg") is not None
                    and abs(o.placement["angle_deg"]) > 20.0]
    assert all("unchecked:vertebral_artery" in o.blocking for o in fixed_beyond)
    struts = [o for o in outcomes if not o.case.disc_only]
    planned = sum(o.status == "plan" for o in struts)
    print(f"cervicothoracic strut plans {planned} of {len(struts)}; refused: "
          f"{[(o.case.seed, o.reason) for o in struts if o.status != 'plan']}")
    assert planned >= 0.8 * len(struts)
