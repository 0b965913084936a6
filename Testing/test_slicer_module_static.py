"""Guards for the Slicer GUI code, which cannot run here (no Slicer application, no Qt): the .ui parses and its
MRML widgets get the scene, the controls the widget uses exist, SlicerParameterName bindings map to parameter node
fields with a connector, the module imports and names what Slicer provides, the icon is real, the engine is Qt-free and
the module is ruff clean. The module guards scan every module file (MODULE_FILES: the module file Slicer loads and its
helper package). The checks are in slicer_module_checks.py, ui_checks.py and extension_checks.py; each guard is also
run on a deliberately broken copy (with errors planted in the module file and in the helper package's files) to prove
it can fail. The extension's packaging checks are in test_extension_index.py, the module run on the headless core in
test_slicer_module_widget.py.
"""

import ast
import os
import subprocess
import sys

import pytest
from extension_checks import check_extension_json, check_module_cmake, check_top_cmake, module_files_on_disk
from slicer_module_checks import (
    ENGINE,
    ENGINE_DIR,
    ICON,
    MODULE_DIR,
    MODULE_FILES,
    MODULE_NAME,
    MODULE_PACKAGE,
    MODULE_PY,
    ROOT,
    UI_FILE,
    broken_copy,
    check_engine_is_qt_free,
    check_engine_names_exist,
    check_icon,
    check_module_imports,
    check_module_structure,
    check_parameter_bindings,
    check_resources_referenced_exist,
    check_slicer_util_names,
    check_ui_defaults_match_fields,
    check_ui_names_used_by_widget,
    edit,
    parameter_fields,
    read_text,
    self_ui_names,
)
from ui_checks import check_mrml_scene_connections, check_ui_parses, ui_parameter_bindings, ui_widgets


def test_ui_parses_and_declares_its_widgets():
    assert check_ui_parses(UI_FILE) == []


def test_mrml_widgets_get_the_scene():
    assert check_mrml_scene_connections(UI_FILE) == []


def test_module_guards_scan_every_module_file():
    """MODULE_FILES is the module file and every Python file of its helper package: all the module's Python code
    outside the engine (a file elsewhere would escape the guards below)."""
    scripts, _ = module_files_on_disk(MODULE_DIR)
    outside_engine = {s for s in scripts if not s.startswith(ENGINE + "/")}
    assert {os.path.relpath(f, MODULE_DIR).replace(os.sep, "/") for f in MODULE_FILES} == outside_engine
    assert MODULE_FILES[0] == MODULE_PY
    for job in ("widget", "logic", "selftest", "parameters", "defectpanel", "bonepanel"):
        assert os.path.join(MODULE_DIR, MODULE_PACKAGE, f"{job}.py") in MODULE_FILES, job


def test_every_module_file_says_its_job():
    for path in MODULE_FILES:
        doc = ast.get_docstring(ast.parse(read_text(path)))
        assert doc and len(doc) > 40, path


def test_widget_code_uses_only_controls_that_exist_in_the_ui():
    assert self_ui_names(MODULE_FILES), "the widget uses no self.ui controls: the AST scan is broken"
    # The panels moved out of the module file use controls too: the guard must see them.
    for panel in ("widget", "bonepanel", "defectpanel"):
        assert self_ui_names(os.path.join(MODULE_DIR, MODULE_PACKAGE, f"{panel}.py")), panel
    assert check_ui_names_used_by_widget(MODULE_FILES, UI_FILE) == []


def test_parameter_names_in_ui_map_to_fields_with_a_connector():
    bindings, _ = ui_parameter_bindings(UI_FILE)
    assert len(bindings) >= 10
    assert len(parameter_fields(MODULE_FILES)) >= len(bindings)
    assert check_parameter_bindings(MODULE_FILES, UI_FILE) == []


def test_ui_defaults_match_parameter_defaults():
    assert check_ui_defaults_match_fields(MODULE_FILES, UI_FILE) == []


def test_module_imports_only_what_slicer_provides():
    assert check_module_imports(MODULE_FILES) == []


def test_module_uses_existing_engine_and_slicer_util_names():
    assert check_engine_names_exist(MODULE_FILES) == []
    assert check_slicer_util_names(MODULE_FILES) == []


def test_module_follows_the_scripted_module_template():
    assert check_module_structure(MODULE_FILES) == []
    assert check_resources_referenced_exist(MODULE_FILES, MODULE_DIR) == []








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
    helpers = ("slicer_module_checks.py", "ui_checks.py", "extension_checks.py", "slicer_stand_ins.py")
    files = MODULE_FILES + [os.path.join(here, f) for f in helpers]
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
    # The module guards, on every file of the copy (the planted errors below are then the only problems).
    assert len(broken.files) == len(MODULE_FILES)
    assert check_ui_names_used_by_widget(broken.files, broken.ui) == []
    assert check_parameter_bindings(broken.files, broken.ui) == []
    assert check_ui_defaults_match_fields(broken.files, broken.ui) == []
    assert check_module_imports(broken.files) == []
    assert check_engine_names_exist(broken.files) == []
    assert check_slicer_util_names(broken.files) == []
    assert check_module_structure(broken.files) == []
    assert check_resources_referenced_exist(broken.files, broken.module_dir) == []


def test_guard_fails_on_invalid_ui_xml(broken):
    edit(broken.ui, "</ui>", "")
    assert check_ui_parses(broken.ui)


def test_guard_fails_on_missing_scene_connection(broken):
    edit(broken.ui, "<receiver>inputVolumeSelector</receiver>", "<receiver>nothing</receiver>")
    assert check_mrml_scene_connections(broken.ui) == ["inputVolumeSelector gets no mrmlSceneChanged -> "
                                                       "setMRMLScene connection"]


def test_guard_fails_on_control_missing_from_ui(broken):
    edit(broken.ui, 'name="segmentBoneButton"', 'name="segmentButtonRenamed"')
    assert check_ui_names_used_by_widget(broken.files, broken.ui) == [
        "self.ui.segmentBoneButton is used in PatientImplantPlannerModule/bonepanel.py but there is no such widget in "
        "the .ui"]


def test_guard_fails_on_control_missing_from_ui_in_each_widget_file(broken):
    """A control the .ui does not have, used in the widget's file or a panel mixin's, is found there."""
    edit(broken.helpers.defectpanel, "self.ui.defectResultLabel.text = \"\"",
         "self.ui.defectResultLabel.text = \"\"\n        self.ui.noSuchControl.enabled = False")
    edit(broken.helpers.widget, "self.ui.progressBar.hide()", "self.ui.noSuchBar.hide()")
    problems = check_ui_names_used_by_widget(broken.files, broken.ui)
    assert problems == [
        "self.ui.noSuchControl is used in PatientImplantPlannerModule/defectpanel.py but there is no such widget in "
        "the .ui",
        "self.ui.noSuchBar is used in PatientImplantPlannerModule/widget.py but there is no such widget in the .ui"]


def test_guard_fails_on_unknown_parameter_name(broken):
    edit(broken.ui, "<string>smoothingMm</string>", "<string>smoothingMillimetres</string>")
    problems = check_parameter_bindings(broken.files, broken.ui)
    assert any("'smoothingMillimetres', which is not a parameter node field" in p for p in problems)


def test_guard_fails_on_widget_that_cannot_show_the_field_type(broken):
    # A QCheckBox bound to an int field: parameterNodeWrapper would raise when the module opens.
    edit(broken.helpers.parameters, "fillInterior: bool = True", "fillInterior: int = 1")
    problems = check_parameter_bindings(broken.files, broken.ui)
    assert problems == ["fillInteriorCheckBox -> fillInterior: QCheckBox needs bool, the field is int"]
    edit(broken.ui, "<string>smoothingMm</string>", "<string>minIslandMm3</string>")
    assert any("bound to both" in p for p in check_parameter_bindings(broken.files, broken.ui))


def test_guard_fails_on_field_that_no_file_uses(broken):
    """A field without a control must be read or written somewhere in the module's files (here: only the logic's
    defect parameters read defectGridMm)."""
    edit(broken.ui, "<string>defectGridMm</string>", "<string>defectGridMmUnbound</string>")
    assert check_parameter_bindings(broken.files, broken.ui) == [
        "defectGridSpinBox has SlicerParameterName 'defectGridMmUnbound', which is not a parameter node field"]
    edit(broken.helpers.logic, "grid_mm=p.defectGridMm,", "grid_mm=1.0,")
    assert "parameter field 'defectGridMm' is neither bound in the .ui nor used in the code" in \
        check_parameter_bindings(broken.files, broken.ui)


def test_guard_fails_on_range_widget_without_bounds(broken):
    edit(broken.helpers.parameters, "Annotated[FloatRange, RangeBounds(-1024, 3071), Default(FloatRange(226, 3071))]",
          "Annotated[FloatRange, Default(FloatRange(226, 3071))]")
    assert any("RangeBounds" in p for p in check_parameter_bindings(broken.files, broken.ui))


def test_guard_fails_on_enum_field_without_enum(broken):
    edit(broken.helpers.parameters, "class Placement(enum.Enum):", "class Placement:")
    problems = check_parameter_bindings(broken.files, broken.ui)
    assert problems == ["placementComboBox -> placement: QComboBox needs Annotated[str, Choice([...])] (or an Enum), "
                        "the field is Placement"]


def test_guard_fails_on_int_text_and_range_that_differ(broken):
    edit(broken.helpers.parameters, "screwsPerEnd: Annotated[int, WithinRange(1, 4)] = 2",
          "screwsPerEnd: Annotated[int, WithinRange(1, 4)] = 3")
    edit(broken.helpers.parameters, 'caseId: str = "CASE-001"', 'caseId: str = "CASE-002"')
    edit(broken.helpers.parameters, "diameterMm: Annotated[float, WithinRange(1, 40)] = 12.0",
          "diameterMm: Annotated[float, WithinRange(1, 30)] = 12.0")
    problems = check_ui_defaults_match_fields(broken.files, broken.ui)
    assert any(p.startswith("screwsPerEndSpinBox shows value 2") for p in problems)
    assert any(p.startswith("caseIdLineEdit shows text 'CASE-001'") for p in problems)
    assert any(p.startswith("diameterSpinBox range [1.0, 40.0] differs from WithinRange(1, 30)") for p in problems)
    assert len(problems) == 3


def test_guard_fails_on_ui_default_that_differs(broken):
    edit(broken.helpers.parameters, "minIslandMm3: Annotated[float, WithinRange(0, 1_000_000)] = 1000.0",
          "minIslandMm3: Annotated[float, WithinRange(0, 1_000_000)] = 500.0")
    assert any("minIslandSpinBox" in p for p in check_ui_defaults_match_fields(broken.files, broken.ui))


def test_guard_fails_on_unsafe_imports(broken):
    edit(broken.helpers.widget, "import qt\n", "import qt\nimport pandas\nimport manifold3d\n")
    edit(broken.helpers.logic, "from PatientImplantPlannerLib.core.errors import",
         "from PatientImplantPlannerLib.core.mesh import "
          "TriMesh\nfrom PatientImplantPlannerLib.core.errors import")
    edit(broken.helpers.selftest, "import json\n", "import json\n\nfrom PatientImplantPlanner import SAMPLE_FILE\n")
    edit(broken.py, "import slicer\n", "import slicer\nimport scipy\n")
    problems = check_module_imports(broken.files)
    assert any(p.startswith("pandas imported at PatientImplantPlannerModule/widget.py line") for p in problems)
    assert any(p.startswith("manifold3d") for p in problems)
    assert any(p.startswith("PatientImplantPlannerLib.core.mesh imported at PatientImplantPlannerModule/logic.py")
               for p in problems)
    assert any(p.startswith("PatientImplantPlanner imported at PatientImplantPlannerModule/selftest.py")
               and "not the reverse" in p for p in problems)
    assert any(p.startswith("scipy imported at PatientImplantPlanner.py line") for p in problems)
    assert len(problems) == 5


def test_guard_fails_on_syntax_error(broken):
    edit(broken.helpers.dependencies, "def ensureDependencies() -> bool:", "def ensureDependencies() -> bool")
    assert any("does not compile" in p for p in check_module_imports(broken.files))


def test_guard_fails_on_misspelt_engine_and_util_names(broken):
    edit(broken.helpers.logic, "import segment_bone", "import segment_bones")
    edit(broken.helpers.dependencies, "slicer.util.confirmOkCancelDisplay(", "slicer.util.confirmOKCancelDisplay(")
    edit(broken.helpers.widget, "slicer.util.errorDisplay(", "slicer.errorDisplay(")
    edit(broken.py, "import AUTO_UPDATE_DELAY_MS,", "import AUTO_UPDATE_DELAY,")
    assert check_engine_names_exist(broken.files) == [
        f"{ENGINE}.scene.bonesegment has no segment_bones (in PatientImplantPlannerModule/logic.py)",
        f"{MODULE_PACKAGE}.widget has no AUTO_UPDATE_DELAY (in PatientImplantPlanner.py)"]
    problems = check_slicer_util_names(broken.files)
    assert any("slicer.util.confirmOKCancelDisplay does not exist (line" in p and "dependencies.py)" in p
               for p in problems)
    assert any(p.startswith("slicer.errorDisplay") and p.endswith("PatientImplantPlannerModule/widget.py)")
               for p in problems)


def test_guard_fails_on_template_deviation(broken):
    edit(broken.helpers.widget, "def onSceneEndClose(", "def onSceneEnded(")
    edit(broken.py, '_("Patient Implant Planner")', '_("PatientImplantPlanner")')
    edit(broken.helpers.selftest, "        self.test_LoadSampleCT()\n", "")
    problems = check_module_structure(broken.files)
    assert f"{MODULE_NAME}Widget.onSceneEndClose() is missing" in problems
    assert 'the module title is not "Patient Implant Planner"' in problems
    assert "runTest() does not call test_LoadSampleCT()" in problems
    assert len(problems) == 3


def test_guard_fails_when_the_module_file_does_not_name_what_slicer_looks_up(broken):
    """Slicer finds <Module>Widget, <Module>Logic and <Module>Test in the module file's namespace only; the widget's
    panel mixins must be classes the guards scan."""
    edit(broken.py, "from PatientImplantPlannerModule.selftest import PatientImplantPlannerTest\n", "")
    edit(broken.py, "from PatientImplantPlannerModule.widget import AUTO_UPDATE_DELAY_MS, PatientImplantPlannerWidget",
         "from PatientImplantPlannerModule.widget import AUTO_UPDATE_DELAY_MS")
    edit(broken.helpers.defectpanel, "class DefectPanelMixin:", "class DefectPanel:")
    problems = check_module_structure(broken.files)
    assert problems == [
        f"{MODULE_NAME}Widget is neither defined nor imported in {MODULE_NAME}.py (Slicer looks for it there)",
        f"class {MODULE_NAME}Widget derives from DefectPanelMixin, which is not a class of the module's files",
        f"{MODULE_NAME}Test is neither defined nor imported in {MODULE_NAME}.py (Slicer looks for it there)"]
    assert check_module_structure(broken.files[1:]) == [f"{MODULE_NAME}.py is not among the files checked"]


def test_guard_fails_on_missing_resource_in_a_helper_file(broken):
    edit(broken.helpers.widget, '"UI/PatientImplantPlanner.ui"', '"UI/PatientImplantPlannerOld.ui"')
    edit(broken.helpers.sampledata, '"PatientImplantPlannerSampleCT.png"', '"PatientImplantPlannerCT.png"')
    assert check_resources_referenced_exist(broken.files, broken.module_dir) == [
        "'PatientImplantPlannerCT.png' is referenced in PatientImplantPlannerModule/sampledata.py but no such file is "
        "under Resources/",
        "'UI/PatientImplantPlannerOld.ui' is referenced in PatientImplantPlannerModule/widget.py but no such file is "
        "under Resources/",
        "resourcePath('UI/PatientImplantPlannerOld.ui') in PatientImplantPlannerModule/widget.py does not exist"]










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
    edit(broken.py, "import slicer\n", "import slicer\nimport os.path as unused_alias\n")
    edit(broken.helpers.dependencies, "def ensureDependencies() -> bool:",
         "def ensureDependencies() -> bool:\n    undefined_name()")
    problems = ruff_problems(broken.files, ROOT)
    assert any("F401" in p and f"{MODULE_NAME}.py" in p for p in problems)
    assert any("F821" in p and "dependencies.py" in p for p in problems)


def test_defect_panel_binds_every_defect_field_and_its_buttons_are_used():
    """The "Defect implant" panel (issue 12): each defect* parameter has a control of a type that can show it, and
    the widget connects the panel's buttons and fills its labels."""
    fields = {n for n in parameter_fields(MODULE_FILES) if n.startswith("defect")}
    assert len(fields) >= 15, fields
    bindings, _ = ui_parameter_bindings(UI_FILE)
    assert fields - set(bindings) == set()
    widgets = ui_widgets(UI_FILE)
    assert widgets.get("defectCollapsibleButton") == "ctkCollapsibleButton"
    used = self_ui_names(MODULE_FILES)
    for name in ("defectFindPlaneButton", "defectBuildButton", "defectResidualLabel", "defectResultLabel"):
        assert name in widgets and name in used, name
