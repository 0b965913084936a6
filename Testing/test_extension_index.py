"""What the Slicer Extensions Index checks before it accepts the extension (ExtensionsIndex
scripts/check_description_files.py: the description JSON against its schema, the category, the repository name,
CMake project() equal to the description file's name, a LICENSE at the repository root) and what its submission
asks for (a README with a screenshot and the module's description, every module file built by CMake). Each check is
also run on a broken copy to prove it can fail.
"""

import os
import re

import pytest
from extension_checks import (
    check_extension_json,
    check_module_cmake,
    check_top_cmake,
    cmake_sets,
    module_files_on_disk,
)
from slicer_module_checks import (
    ENGINE,
    EXTENSION_JSON,
    MODULE_CMAKE,
    MODULE_DIR,
    MODULE_NAME,
    MODULE_PACKAGE,
    MODULE_PY,
    README,
    ROOT,
    TOP_CMAKE,
    broken_copy,
    edit,
    read_text,
)

# The Apache License 2.0 text: its title, the nine numbered sections and the end marker, in this order.
APACHE_2_MARKERS = (
    "Apache License", "Version 2.0, January 2004", "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION",
    "1. Definitions.", "2. Grant of Copyright License.", "3. Grant of Patent License.", "4. Redistribution.",
    "5. Submission of Contributions.", "6. Trademarks.", "7. Disclaimer of Warranty.",
    "8. Limitation of Liability.", "9. Accepting Warranty or Additional Liability.", "END OF TERMS AND CONDITIONS",
)
# File names the index's check_license_file accepts at the repository root.
LICENSE_NAMES = ("LICENSE", "LICENCE", "License.txt", "license.txt", "LICENSE.txt", "COPYING", "COPYING.txt")


def check_license(root):
    """A license file at the root, with the full Apache-2.0 text, and the package metadata saying Apache-2.0."""
    found = [n for n in LICENSE_NAMES if os.path.isfile(os.path.join(root, n))]
    if not found:
        return ["no license file at the repository root"]
    text = read_text(os.path.join(root, found[0]))
    problems, at = [], 0
    for marker in APACHE_2_MARKERS:
        at = text.find(marker, at)
        if at < 0:
            problems.append(f"{found[0]} is not the full Apache-2.0 text: {marker!r} missing or out of order")
            break
    pyproject = os.path.join(root, "pyproject.toml")
    if os.path.isfile(pyproject) and not re.search(r'^license\s*=\s*"Apache-2\.0"', read_text(pyproject), re.M):
        problems.append("pyproject.toml does not declare license = \"Apache-2.0\"")
    return problems


def cmake_project_name(top_cmake):
    """The name the index reads from project(...) (its own pattern)."""
    m = re.search(r"project\s*\(\s*([^\s\)\n\r]+)", read_text(top_cmake), re.I)
    return m.group(1).strip("\"'") if m else None


def check_project_name(top_cmake, json_path):
    name = os.path.splitext(os.path.basename(json_path))[0]
    project = cmake_project_name(top_cmake)
    return [] if project == name else [f"CMake project({project}) is not the description file's name {name!r}"]


def module_title(module_py):
    m = re.search(r'self\.parent\.title = _\("([^"]+)"\)', read_text(module_py))
    return m.group(1) if m else None


def check_readme(readme, top_cmake, module_py):
    """README shows the extension's screenshot (the file EXTENSION_SCREENSHOTURLS points to) and describes the
    module: what it is, its title and category."""
    text = read_text(readme)
    problems = []
    urls = cmake_sets(read_text(top_cmake)).get("EXTENSION_SCREENSHOTURLS", [])
    shots = {u.split("/main/", 1)[-1] for u in urls}
    links = re.findall(r"!\[[^\]]+\]\(([^)\s]+)\)", text)
    shown = [link for link in links if link in shots]
    if not shown:
        problems.append(f"README shows none of the screenshots {sorted(shots)} (as ![alt text](path))")
    for link in shown:
        if not os.path.isfile(os.path.join(os.path.dirname(readme), link)):
            problems.append(f"README's screenshot {link} does not exist")
    title = module_title(module_py)
    for needed in ("3D Slicer extension", "category *Planning*", f'"{title}"'):
        if needed not in text:
            problems.append(f"README does not say {needed}")
    return problems


def test_every_module_file_is_listed_in_cmake():
    scripts, resources = module_files_on_disk(MODULE_DIR)
    assert f"{MODULE_NAME}.py" in scripts and f"{ENGINE}/__init__.py" in scripts
    assert f"{MODULE_PACKAGE}/widget.py" in scripts
    assert f"Resources/UI/{MODULE_NAME}.ui" in resources
    assert check_module_cmake(MODULE_CMAKE, MODULE_DIR) == []


def test_extension_cmake_has_the_metadata():
    assert check_top_cmake(TOP_CMAKE) == []


def test_extension_index_json():
    assert check_extension_json(EXTENSION_JSON, TOP_CMAKE) == []


def test_license_is_apache_2():
    assert check_license(ROOT) == []


def test_cmake_project_is_the_description_name():
    assert cmake_project_name(TOP_CMAKE) == MODULE_NAME
    assert check_project_name(TOP_CMAKE, EXTENSION_JSON) == []


def test_readme_has_the_screenshot_and_the_module_description():
    assert check_readme(README, TOP_CMAKE, MODULE_PY) == []


# ------------------------------------------------------------------------------------- the checks can fail


@pytest.fixture
def broken(tmp_path):
    return broken_copy(tmp_path)


def test_checks_pass_on_the_unbroken_copy(broken):
    assert check_license(str(broken.root)) == []
    assert check_project_name(broken.top_cmake, broken.json) == []
    assert check_readme(broken.readme, broken.top_cmake, broken.py) == []


def test_guard_fails_on_unlisted_or_missing_files(broken):
    with open(os.path.join(broken.module_dir, ENGINE, "newfeature.py"), "w") as f:
        f.write("")
    with open(os.path.join(broken.module_dir, "Resources", "Icons", "extra.png"), "wb") as f:
        f.write(b"")
    os.remove(os.path.join(broken.module_dir, ENGINE, "core", "errors.py"))
    with open(os.path.join(broken.module_dir, MODULE_PACKAGE, "newpanel.py"), "w") as f:
        f.write("")
    problems = check_module_cmake(broken.cmake, broken.module_dir)
    assert f"{MODULE_PACKAGE}/newpanel.py is not listed in MODULE_PYTHON_SCRIPTS" in problems
    assert f"{ENGINE}/newfeature.py is not listed in MODULE_PYTHON_SCRIPTS" in problems
    assert "Resources/Icons/extra.png is not listed in MODULE_PYTHON_RESOURCES" in problems
    assert f"{ENGINE}/core/errors.py is listed in MODULE_PYTHON_SCRIPTS but does not exist" in problems


def test_guard_fails_on_missing_build_macro_pieces(broken):
    edit(broken.cmake, "  WITH_GENERIC_TESTS\n", "")
    edit(broken.cmake, "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)", "")
    problems = check_module_cmake(broken.cmake, broken.module_dir)
    assert "slicerMacroBuildScriptedModule has no WITH_GENERIC_TESTS" in problems
    assert any("slicer_add_python_unittest" in p for p in problems)


def test_guard_fails_on_bad_extension_metadata(broken):
    edit(broken.top_cmake, 'set(EXTENSION_CATEGORY "Planning")', 'set(EXTENSION_CATEGORY "Examples")')
    edit(broken.top_cmake, "set(EXTENSION_ICONURL", "#set(EXTENSION_ICONURL")
    edit(broken.top_cmake, "include(${Slicer_EXTENSION_CPACK})", "")
    problems = check_top_cmake(broken.top_cmake)
    assert any(p.startswith("EXTENSION_CATEGORY") for p in problems)
    assert "EXTENSION_ICONURL is not set" in problems
    assert any("Slicer_EXTENSION_CPACK" in p for p in problems)


def test_guard_fails_on_bad_extension_json(broken):
    edit(broken.json, '"Planning"', '"Examples"')
    edit(broken.json, '"tier"', '"maturity"')
    problems = check_extension_json(broken.json, broken.top_cmake)
    assert "category is 'Examples', expected 'Planning'" in problems
    assert "key 'maturity' is not in the catalog entry schema" in problems
    edit(broken.json, "{", "{,")
    assert "does not parse" in check_extension_json(broken.json, broken.top_cmake)[0]


def test_guard_fails_on_json_values_the_schema_refuses(broken):
    edit(broken.json, '"tier": 1', '"tier": 2')
    edit(broken.json, '"build_subdirectory": "."', '"build_subdirectory": 1')
    edit(broken.json, "SlicerPatientImplantPlanner", "PatientImplantPlanner")
    problems = check_extension_json(broken.json, broken.top_cmake)
    assert "tier is 2, the schema allows [1, 3, 5]" in problems
    assert "build_subdirectory is 1, the schema wants a str" in problems
    assert any("does not contain 'Slicer'" in p for p in problems)


def test_guard_fails_on_missing_or_other_license(broken):
    edit(broken.license, "8. Limitation of Liability.", "8. Limitation.")
    assert check_license(str(broken.root)) == [
        "LICENSE is not the full Apache-2.0 text: '8. Limitation of Liability.' missing or out of order"]
    os.remove(broken.license)
    assert check_license(str(broken.root)) == ["no license file at the repository root"]


def test_guard_fails_on_project_name_other_than_the_json(broken):
    edit(broken.top_cmake, "project(PatientImplantPlanner)", "project(PatientImplantPlannerExtension)")
    assert check_project_name(broken.top_cmake, broken.json) == [
        "CMake project(PatientImplantPlannerExtension) is not the description file's name 'PatientImplantPlanner'"]


def test_guard_fails_on_readme_without_screenshot_or_description(broken):
    edit(broken.readme, "](docs/screenshot.png)", "](docs/other.png)")
    edit(broken.readme, "3D Slicer extension", "Slicer plug-in")
    problems = check_readme(broken.readme, broken.top_cmake, broken.py)
    assert problems[0].startswith("README shows none of the screenshots ['docs/screenshot.png']")
    assert "README does not say 3D Slicer extension" in problems
    os.remove(os.path.join(broken.root, "docs", "screenshot.png"))
    edit(broken.readme, "](docs/other.png)", "](docs/screenshot.png)")
    assert "README's screenshot docs/screenshot.png does not exist" in check_readme(broken.readme, broken.top_cmake,
                                                                                     broken.py)
