"""Static checks of the extension's packaging, which the Slicer Extensions Index and the build read: the module's
CMakeLists (every module file listed and built), the extension's top-level CMakeLists (metadata, template order) and
the Extensions Index description JSON. Plain functions returning lists of problems, like slicer_module_checks.py
(which holds the module's own checks and ``broken_copy``); used by test_extension_index.py and
test_slicer_module_static.py.
"""

import json
import os
import re

from slicer_module_checks import IGNORED_DIR_SUFFIXES, IGNORED_DIRS, MODULE_NAME, read_text

EXTENSION_FIELDS = (
    "EXTENSION_HOMEPAGE",
    "EXTENSION_CATEGORY",
    "EXTENSION_CONTRIBUTORS",
    "EXTENSION_DESCRIPTION",
    "EXTENSION_ICONURL",
    "EXTENSION_SCREENSHOTURLS",
    "EXTENSION_DEPENDS",
)
# Keys of the Extensions Index catalog entry schema v1.0.1 (additionalProperties is false there).
# The Extensions Index catalog entry schema v1.0.1, the one our JSON names (Slicer/Slicer,
# Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json): its properties with their type or allowed values.
# additionalProperties is false there, so any other key fails the index's check_json_schema.
CATALOG_SCHEMA = {"$schema": str, "category": str, "scm_url": str, "scm_revision": str, "scm_type": ("git", "local"),
                  "build_dependencies": list, "build_subdirectory": str, "enabled": bool, "tier": (1, 3, 5)}
CATALOG_KEYS = set(CATALOG_SCHEMA)
CATALOG_REQUIRED = {"$schema", "category", "scm_url"}


# ----------------------------------------------------------------------------------------------------- CMakeLists


def _strip_cmake_comments(text):
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())


def cmake_sets(text):
    """{variable: [values]} of every set(VAR values...) (quotes removed)."""
    out = {}
    for m in re.finditer(r"\bset\(\s*(\w+)\s+(.*?)\)", _strip_cmake_comments(text), re.S):
        values = re.findall(r'"([^"]*)"|(\S+)', m.group(2))
        out[m.group(1)] = [a or b for a, b in values]
    return out


def module_listed_files(cmake_path):
    """Files listed in MODULE_PYTHON_SCRIPTS and MODULE_PYTHON_RESOURCES, with ${MODULE_NAME} expanded."""
    sets = cmake_sets(read_text(cmake_path))
    name = (sets.get("MODULE_NAME") or [""])[0]
    listed = {}
    for var in ("MODULE_PYTHON_SCRIPTS", "MODULE_PYTHON_RESOURCES"):
        listed[var] = [v.replace("${MODULE_NAME}", name) for v in sets.get(var, [])]
    return name, listed


def module_files_on_disk(module_dir):
    """(.py files anywhere in the module folder, every file under Resources/), relative, '/'-separated."""
    scripts, resources = set(), set()
    for dirpath, dirnames, files in os.walk(module_dir):
        dirnames[:] = [d for d in dirnames if d not in IGNORED_DIRS and not d.endswith(IGNORED_DIR_SUFFIXES)]
        for f in files:
            rel = os.path.relpath(os.path.join(dirpath, f), module_dir).replace(os.sep, "/")
            if rel.startswith("Resources/"):
                resources.add(rel)
            elif f.endswith(".py"):
                scripts.add(rel)
    return scripts, resources


def check_module_cmake(cmake_path, module_dir):
    text = _strip_cmake_comments(read_text(cmake_path))
    name, listed = module_listed_files(cmake_path)
    problems = []
    if name != MODULE_NAME:
        problems.append(f"MODULE_NAME is {name!r}, expected {MODULE_NAME!r}")
    scripts, resources = module_files_on_disk(module_dir)
    for var, on_disk in (("MODULE_PYTHON_SCRIPTS", scripts), ("MODULE_PYTHON_RESOURCES", resources)):
        in_list = listed[var]
        problems += [f"{f} is not listed in {var}" for f in sorted(on_disk - set(in_list))]
        problems += [f"{f} is listed in {var} but does not exist" for f in sorted(set(in_list) - on_disk)]
        problems += [f"{f} is listed twice in {var}" for f in sorted({f for f in in_list if in_list.count(f) > 1})]
    macro = re.search(r"slicerMacroBuildScriptedModule\((.*?)\)", text, re.S)
    if not macro:
        problems.append("slicerMacroBuildScriptedModule(...) is missing")
    else:
        args = macro.group(1).split()
        for keyword, value in (("NAME", "${MODULE_NAME}"), ("SCRIPTS", "${MODULE_PYTHON_SCRIPTS}"),
                               ("RESOURCES", "${MODULE_PYTHON_RESOURCES}")):
            if keyword not in args or args[args.index(keyword) + 1] != value:
                problems.append(f"slicerMacroBuildScriptedModule has no {keyword} {value}")
        if "WITH_GENERIC_TESTS" not in args:
            problems.append("slicerMacroBuildScriptedModule has no WITH_GENERIC_TESTS")
    if not re.search(r"if\(BUILD_TESTING\).*slicer_add_python_unittest\(\s*SCRIPT\s+\$\{MODULE_NAME\}\.py\s*\)",
                     text, re.S):
        problems.append("slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py) is missing from the testing block")
    return problems


def check_top_cmake(cmake_path):
    text = read_text(cmake_path)
    code = _strip_cmake_comments(text)
    sets = cmake_sets(text)
    problems = []
    for field in EXTENSION_FIELDS:
        if not "".join(sets.get(field, [])).strip():
            problems.append(f"{field} is not set")
    if sets.get("EXTENSION_CATEGORY") != ["Planning"]:
        problems.append(f"EXTENSION_CATEGORY is {sets.get('EXTENSION_CATEGORY')}, expected Planning")
    if sets.get("EXTENSION_DEPENDS") != ["NA"]:
        problems.append("EXTENSION_DEPENDS must be NA (no extension dependencies)")
    for field in ("EXTENSION_HOMEPAGE", "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        if not all(v.startswith("https://") for v in sets.get(field, [""])):
            problems.append(f"{field} must be https URLs")
    steps = [
        rf"project\(\s*{MODULE_NAME}\s*\)",
        r"find_package\(\s*Slicer\s+REQUIRED\s*\)",
        r"include\(\s*\$\{Slicer_USE_FILE\}\s*\)",
        rf"add_subdirectory\(\s*{MODULE_NAME}\s*\)",
        r"include\(\s*\$\{Slicer_EXTENSION_GENERATE_CONFIG\}\s*\)",
        r"include\(\s*\$\{Slicer_EXTENSION_CPACK\}\s*\)",
    ]
    last = -1
    for step in steps:
        m = re.search(step, code)
        if not m:
            problems.append(f"missing: {step}")
        elif m.start() < last:
            problems.append(f"out of order (Slicer's extension template order): {step}")
        else:
            last = m.start()
    return problems


def check_extension_json(json_path, top_cmake):
    try:
        with open(json_path, encoding="utf-8") as f:
            entry = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        return [f"{json_path} does not parse: {e}"]
    problems = []
    if not isinstance(entry, dict):
        return ["the extension description must be a JSON object"]
    problems += [f"required key {k!r} is missing" for k in sorted(CATALOG_REQUIRED - set(entry))]
    problems += [f"key {k!r} is not in the catalog entry schema" for k in sorted(set(entry) - CATALOG_KEYS)]
    if not re.search(r"slicer-extension-catalog-entry-schema-v1\.0\.\d+\.json#?$", str(entry.get("$schema", ""))):
        problems.append("$schema is not a Slicer extension catalog entry schema URL")
    if entry.get("category") != "Planning":
        problems.append(f"category is {entry.get('category')!r}, expected 'Planning'")
    if entry.get("build_dependencies", []) != []:
        problems.append("build_dependencies must be [] (EXTENSION_DEPENDS is NA)")
    homepage = (cmake_sets(read_text(top_cmake)).get("EXTENSION_HOMEPAGE") or [""])[0]
    if str(entry.get("scm_url", "")).removesuffix(".git") != homepage:
        problems.append(f"scm_url {entry.get('scm_url')!r} is not the EXTENSION_HOMEPAGE repository {homepage!r}")
    for key, allowed in CATALOG_SCHEMA.items():
        if key not in entry:
            continue
        value = entry[key]
        if isinstance(allowed, tuple):
            if value not in allowed or isinstance(value, bool):
                problems.append(f"{key} is {value!r}, the schema allows {list(allowed)}")
        elif not isinstance(value, allowed) or (allowed is list and not all(isinstance(v, str) for v in value)):
            problems.append(f"{key} is {value!r}, the schema wants a {allowed.__name__}")
    # The index's own checks beyond the schema (ExtensionsIndex scripts/check_description_files.py).
    url = str(entry.get("scm_url", ""))
    if not url.startswith(("https://", "git://")):
        problems.append(f"scm_url {url!r} is not an https:// or git:// URL")
    if "slicer" not in url.rstrip("/").rsplit("/", 1)[-1].lower():
        problems.append(f"the repository name of {url!r} does not contain 'Slicer'")
    return problems
