"""Guards for the Slicer GUI code, which cannot run here (no Slicer application, no Qt): the .ui parses and its
MRML widgets get the scene, the controls the widget uses exist, SlicerParameterName bindings map to parameter node
fields with a connector, the module imports and names what Slicer provides, the icon is real, the engine is Qt-free and
the module is ruff clean. The checks are in slicer_module_checks.py; each guard is also run on a deliberately broken
copy to prove it can fail. The extension's packaging checks are in test_extension_index.py, the module run on the
headless core in test_slicer_module_widget.py.
"""

import os
import subprocess
import sys

import pytest
from slicer_module_checks import (
    ENGINE,
    ENGINE_DIR,
    ICON,
    MODULE_DIR,
    MODULE_NAME,
    MODULE_PY,
    ROOT,
    UI_FILE,
    broken_copy,
    check_engine_is_qt_free,
    check_engine_names_exist,
    check_extension_json,
    check_icon,
    check_module_cmake,
    check_module_imports,
    check_module_structure,
    check_mrml_scene_connections,
    check_parameter_bindings,
    check_resources_referenced_exist,
    check_slicer_util_names,
    check_top_cmake,
    check_ui_defaults_match_fields,
    check_ui_names_used_by_widget,
    check_ui_parses,
    edit,
    self_ui_names,
    ui_parameter_bindings,
)


def test_ui_parses_and_declares_its_widgets():
    assert check_ui_parses(UI_FILE) == []


def test_mrml_widgets_get_the_scene():
    assert check_mrml_scene_connections(UI_FILE) == []


def test_widget_code_uses_only_controls_that_exist_in_the_ui():
    assert self_ui_names(MODULE_PY), "the widget uses no self.ui controls: the AST scan is broken"
    assert check_ui_names_used_by_widget(MODULE_PY, UI_FILE) == []


def test_parameter_names_in_ui_map_to_fields_with_a_connector():
    bindings, _ = ui_parameter_bindings(UI_FILE)
    assert len(bindings) >= 10
    assert check_parameter_bindings(MODULE_PY, UI_FILE) == []


def test_ui_defaults_match_parameter_defaults():
    assert check_ui_defaults_match_fields(MODULE_PY, UI_FILE) == []


def test_module_imports_only_what_slicer_provides():
    assert check_module_imports(MODULE_PY) == []


def test_module_uses_existing_engine_and_slicer_util_names():
    assert check_engine_names_exist(MODULE_PY) == []
    assert check_slicer_util_names(MODULE_PY) == []


def test_module_follows_the_scripted_module_template():
    assert check_module_structure(MODULE_PY) == []
    assert check_resources_referenced_exist(MODULE_PY, MODULE_DIR) == []








def test_icon_is_a_real_128_png():
    assert check_icon(ICON) == []


def test_engine_is_qt_free():
    assert check_engine_is_qt_free(ENGINE_DIR) == []


def ruff_problems(paths, cwd):
    """ruff's findings (the project's pyproject settings) on ``paths``; [] when clean."""
    config = os.path.join(ROOT, "pyproject.toml")
    run = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--config", config, "--output-format",
                          "concise", *paths], cwd=cwd, capture_output=True, text=True)
    return [] if run.returncode == 0 else [line for line in run.stdout.splitlines() if ": " in line]


def test_module_and_its_guards_are_ruff_clean():
    """The module file runs only inside Slicer and these test helpers only here: ruff is their only linter run."""
    here = os.path.dirname(os.path.abspath(__file__))
    files = [MODULE_PY] + [os.path.join(here, f) for f in ("slicer_module_checks.py", "slicer_stand_ins.py")]
    assert ruff_problems(files, ROOT) == []



# ------------------------------------------------------------------------------------- the guards can fail


@pytest.fixture
def broken(tmp_path):
    return broken_copy(tmp_path)


def test_guards_pass_on_the_unbroken_copy(broken):
    assert check_ui_parses(broken.ui) == []
    assert check_module_cmake(broken.cmake, broken.module_dir) == []
    assert check_top_cmake(broken.top_cmake) == []
    assert check_extension_json(broken.json, broken.top_cmake) == []
    assert check_icon(broken.icon) == []
    assert check_engine_is_qt_free(broken.engine) == []


def test_guard_fails_on_invalid_ui_xml(broken):
    edit(broken.ui, "</ui>", "")
    assert check_ui_parses(broken.ui)


def test_guard_fails_on_missing_scene_connection(broken):
    edit(broken.ui, "<receiver>inputVolumeSelector</receiver>", "<receiver>nothing</receiver>")
    assert check_mrml_scene_connections(broken.ui) == ["inputVolumeSelector gets no mrmlSceneChanged -> "
                                                       "setMRMLScene connection"]


def test_guard_fails_on_control_missing_from_ui(broken):
    edit(broken.ui, 'name="segmentBoneButton"', 'name="segmentButtonRenamed"')
    assert any("self.ui.segmentBoneButton" in p for p in check_ui_names_used_by_widget(broken.py, broken.ui))


def test_guard_fails_on_unknown_parameter_name(broken):
    edit(broken.ui, "<string>smoothingMm</string>", "<string>smoothingMillimetres</string>")
    problems = check_parameter_bindings(broken.py, broken.ui)
    assert any("'smoothingMillimetres', which is not a parameter node field" in p for p in problems)


def test_guard_fails_on_widget_that_cannot_show_the_field_type(broken):
    # A QCheckBox bound to an int field: parameterNodeWrapper would raise when the module opens.
    edit(broken.py, "fillInterior: bool = True", "fillInterior: int = 1")
    problems = check_parameter_bindings(broken.py, broken.ui)
    assert problems == ["fillInteriorCheckBox -> fillInterior: QCheckBox needs bool, the field is int"]
    edit(broken.ui, "<string>smoothingMm</string>", "<string>minIslandMm3</string>")
    assert any("bound to both" in p for p in check_parameter_bindings(broken.py, broken.ui))


def test_guard_fails_on_range_widget_without_bounds(broken):
    edit(broken.py, "Annotated[FloatRange, RangeBounds(-1024, 3071), Default(FloatRange(226, 3071))]",
          "Annotated[FloatRange, Default(FloatRange(226, 3071))]")
    assert any("RangeBounds" in p for p in check_parameter_bindings(broken.py, broken.ui))


def test_guard_fails_on_enum_field_without_enum(broken):
    edit(broken.py, "class Placement(enum.Enum):", "class Placement:")
    problems = check_parameter_bindings(broken.py, broken.ui)
    assert problems == ["placementComboBox -> placement: QComboBox needs Annotated[str, Choice([...])] (or an Enum), "
                        "the field is Placement"]


def test_guard_fails_on_int_text_and_range_that_differ(broken):
    edit(broken.py, "screwsPerEnd: Annotated[int, WithinRange(1, 4)] = 2",
          "screwsPerEnd: Annotated[int, WithinRange(1, 4)] = 3")
    edit(broken.py, 'caseId: str = "CASE-001"', 'caseId: str = "CASE-002"')
    edit(broken.py, "diameterMm: Annotated[float, WithinRange(1, 40)] = 12.0",
          "diameterMm: Annotated[float, WithinRange(1, 30)] = 12.0")
    problems = check_ui_defaults_match_fields(broken.py, broken.ui)
    assert any(p.startswith("screwsPerEndSpinBox shows value 2") for p in problems)
    assert any(p.startswith("caseIdLineEdit shows text 'CASE-001'") for p in problems)
    assert any(p.startswith("diameterSpinBox range [1.0, 40.0] differs from WithinRange(1, 30)") for p in problems)
    assert len(problems) == 3


def test_guard_fails_on_ui_default_that_differs(broken):
    edit(broken.py, "minIslandMm3: Annotated[float, WithinRange(0, 1_000_000)] = 1000.0",
          "minIslandMm3: Annotated[float, WithinRange(0, 1_000_000)] = 500.0")
    assert any("minIslandSpinBox" in p for p in check_ui_defaults_match_fields(broken.py, broken.ui))


def test_guard_fails_on_unsafe_imports(broken):
    edit(broken.py, "import qt\n", "import qt\nimport pandas\nimport manifold3d\n")
    edit(broken.py, "from PatientImplantPlannerLib.core.errors import",
         "from PatientImplantPlannerLib.core.mesh import "
          "TriMesh\nfrom PatientImplantPlannerLib.core.errors import")
    problems = check_module_imports(broken.py)
    assert any(p.startswith("pandas") for p in problems)
    assert any(p.startswith("manifold3d") for p in problems)
    assert any(p.startswith("PatientImplantPlannerLib.core.mesh") for p in problems)


def test_guard_fails_on_syntax_error(broken):
    edit(broken.py, "def ensureDependencies() -> bool:", "def ensureDependencies() -> bool")
    assert any("does not compile" in p for p in check_module_imports(broken.py))


def test_guard_fails_on_misspelt_engine_and_util_names(broken):
    edit(broken.py, "import segment_bone", "import segment_bones")
    edit(broken.py, "slicer.util.confirmOkCancelDisplay(", "slicer.util.confirmOKCancelDisplay(")
    edit(broken.py, "slicer.util.errorDisplay(", "slicer.errorDisplay(")
    assert check_engine_names_exist(broken.py) == [f"{ENGINE}.scene.bonesegment has no segment_bones"]
    problems = check_slicer_util_names(broken.py)
    assert any("slicer.util.confirmOKCancelDisplay does not exist" in p for p in problems)
    assert any(p.startswith("slicer.errorDisplay") for p in problems)


def test_guard_fails_on_template_deviation(broken):
    edit(broken.py, "def onSceneEndClose(", "def onSceneEnded(")
    edit(broken.py, '_("Patient Implant Planner")', '_("PatientImplantPlanner")')
    edit(broken.py, "        self.test_LoadSampleCT()\n", "")
    problems = check_module_structure(broken.py)
    assert f"{MODULE_NAME}Widget.onSceneEndClose() is missing" in problems
    assert 'the module title is not "Patient Implant Planner"' in problems
    assert "runTest() does not call test_LoadSampleCT()" in problems










def test_guard_fails_on_blank_or_wrong_size_icon(broken):
    from PIL import Image

    Image.new("RGBA", (128, 128), (40, 60, 90, 255)).save(broken.icon)
    assert any("blank" in p for p in check_icon(broken.icon))
    Image.open(ICON).resize((64, 64)).save(broken.icon)
    assert "icon is 64x64, expected 128x128" in check_icon(broken.icon)
    with open(broken.icon, "wb") as f:
        f.write(b"GIF89a")
    assert "is not a PNG file" in check_icon(broken.icon)[0]


def test_guard_fails_on_gui_code_in_engine(broken):
    with open(os.path.join(broken.engine, "badgui.py"), "w") as f:
        f.write("import qt\nimport slicer\n\n\ndef f():\n    slicer.util.errorDisplay('x')\n"
                "    return slicer.app.layoutManager()\n")
    problems = check_engine_is_qt_free(broken.engine)
    assert "badgui.py:1 imports qt" in problems
    assert "badgui.py:6 calls GUI function slicer.util.errorDisplay" in problems
    assert any(p.startswith("badgui.py:7 uses slicer.app") for p in problems)


def test_guard_fails_on_ruff_findings(broken):
    edit(broken.py, "import qt\n", "import qt\nimport os.path as unused_alias\n")
    edit(broken.py, "def ensureDependencies() -> bool:", "def ensureDependencies() -> bool:\n    undefined_name()")
    problems = ruff_problems([broken.py], ROOT)
    assert any("F401" in p for p in problems) and any("F821" in p for p in problems)


def test_defect_panel_binds_every_defect_field_and_its_buttons_are_used():
    """The "Defect implant" panel (issue 12): each defect* parameter has a control of a type that can show it, and
    the widget connects the panel's buttons and fills its labels."""
    from slicer_module_checks import parameter_fields, ui_widgets

    fields = {n for n in parameter_fields(MODULE_PY) if n.startswith("defect")}
    assert len(fields) >= 15, fields
    bindings, _ = ui_parameter_bindings(UI_FILE)
    assert fields - set(bindings) == set()
    widgets = ui_widgets(UI_FILE)
    assert widgets.get("defectCollapsibleButton") == "ctkCollapsibleButton"
    used = self_ui_names(MODULE_PY)
    for name in ("defectFindPlaneButton", "defectBuildButton", "defectResidualLabel", "defectResultLabel"):
        assert name in widgets and name in used, name
