"""Guards for the Slicer GUI code, which cannot run here (no Slicer application, no Qt).

Static checks read the real files: the .ui, the module .py (with ``ast``), both CMakeLists, the Extensions Index
JSON and the icon. Each check is a plain function that returns a list of problems, so every guard is also run
against a deliberately broken copy in ``tmp_path`` to prove it can fail.

The last tests import the module .py with small stand-ins for the GUI-only Slicer packages (qt, ctk,
ScriptedLoadableModule, parameterNodeWrapper, SampleData) and run the module's logic and its self-test on the
headless Slicer core: that catches wrong engine calls in the code Slicer would run.
"""

import ast
import hashlib
import importlib.util
import json
import os
import re
import shutil
import sys
import types
import unittest
import xml.etree.ElementTree as ET

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULE_NAME = "PatientImplantPlanner"
MODULE_DIR = os.path.join(ROOT, MODULE_NAME)
MODULE_PY = os.path.join(MODULE_DIR, f"{MODULE_NAME}.py")
UI_FILE = os.path.join(MODULE_DIR, "Resources", "UI", f"{MODULE_NAME}.ui")
ICON = os.path.join(MODULE_DIR, "Resources", "Icons", f"{MODULE_NAME}.png")
MODULE_CMAKE = os.path.join(MODULE_DIR, "CMakeLists.txt")
TOP_CMAKE = os.path.join(ROOT, "CMakeLists.txt")
EXTENSION_JSON = os.path.join(ROOT, f"{MODULE_NAME}.json")
ENGINE_DIR = os.path.join(MODULE_DIR, f"{MODULE_NAME}Lib")
ENGINE = f"{MODULE_NAME}Lib"

# Folders under the module directory that are build or packaging by-products, not module files.
IGNORED_DIRS = {"__pycache__"}
IGNORED_DIR_SUFFIXES = (".egg-info",)

# Python modules that Slicer's Python provides (bundled) and that the module may import at top level.
SLICER_TOP_LEVEL = {"slicer", "qt", "ctk", "vtk"}
# ... and inside functions (imported when used: SampleData is a module loaded after startup, numpy is bundled,
# the engine may pull in manifold3d which is installed on first use).
SLICER_IN_FUNCTIONS = SLICER_TOP_LEVEL | {"SampleData", "numpy", "scipy", "SimpleITK", ENGINE}
# The engine module that is safe at top level: it has no third-party imports.
ENGINE_TOP_LEVEL = {f"{ENGINE}.errors"}
# Installed on first use by ensureDependencies() only (import names).
FIRST_USE_PACKAGES = {"manifold3d", "fpdf"}

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
CATALOG_KEYS = {"$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies",
                "build_subdirectory", "enabled", "tier"}
CATALOG_REQUIRED = {"$schema", "category", "scm_url"}

WIDGET_METHODS = ("setup", "cleanup", "enter", "exit", "onSceneStartClose", "onSceneEndClose",
                  "initializeParameterNode", "setParameterNode")


def _read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def _stdlib():
    return set(sys.stdlib_module_names)


# ------------------------------------------------------------------------------------------------------------ .ui


def ui_widgets(ui_path):
    """{widget name: class} of every widget in the .ui file (raises ParseError if it is not XML)."""
    root = ET.parse(ui_path).getroot()
    return {w.get("name"): w.get("class") for w in root.iter("widget")}


def ui_parameter_bindings(ui_path):
    """{SlicerParameterName: (widget name, widget class)}; a name bound twice is reported as a problem."""
    root = ET.parse(ui_path).getroot()
    bindings, problems = {}, []
    for w in root.iter("widget"):
        for p in w.findall("property"):
            if p.get("name") == "SlicerParameterName":
                name = (p.findtext("string") or "").strip()
                if name in bindings:
                    problems.append(f"parameter {name!r} is bound to both {bindings[name][0]} and {w.get('name')}")
                bindings[name] = (w.get("name"), w.get("class"))
    return bindings, problems


def ui_widget_property(ui_path, widget_name, prop):
    """Text of a simple property (bool/double/number/string) of a widget, or None."""
    root = ET.parse(ui_path).getroot()
    for w in root.iter("widget"):
        if w.get("name") == widget_name:
            for p in w.findall("property"):
                if p.get("name") == prop and len(p):
                    return (p[0].text or "").strip()
    return None


def ui_combo_items(ui_path, widget_name):
    """Texts of the items a QComboBox lists in the .ui."""
    root = ET.parse(ui_path).getroot()
    for w in root.iter("widget"):
        if w.get("name") == widget_name:
            return [(item.findtext("property/string") or "") for item in w.findall("item")]
    return None


def check_ui_parses(ui_path):
    try:
        root = ET.parse(ui_path).getroot()
    except ET.ParseError as e:
        return [f"{ui_path} is not valid XML: {e}"]
    problems = []
    if root.tag != "ui":
        problems.append(f"root element is <{root.tag}>, not <ui>")
    top = root.find("widget")
    if top is None or top.get("class") != "qMRMLWidget":
        problems.append("the top-level widget must be a qMRMLWidget (its mrmlSceneChanged signal sets the scene)")
    names = [w.get("name") for w in root.iter("widget")]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        problems.append(f"duplicate widget names: {duplicates}")
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    qt_classes = {c for c in set(ui_widgets(ui_path).values()) if c.startswith("Q")}
    undeclared = sorted(set(ui_widgets(ui_path).values()) - declared - qt_classes)
    if undeclared:
        problems.append(f"custom widget classes not declared in <customwidgets>: {undeclared}")
    return problems


def check_mrml_scene_connections(ui_path):
    """Every MRML-aware widget (qMRML*, qSlicer*) gets the scene from the top-level widget's mrmlSceneChanged."""
    root = ET.parse(ui_path).getroot()
    top = root.find("widget").get("name")
    connected = {
        c.findtext("receiver")
        for c in root.iter("connection")
        if c.findtext("sender") == top
        and c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
        and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"
    }
    needs = {n for n, c in ui_widgets(ui_path).items() if n != top and c.startswith(("qMRML", "qSlicer"))}
    return [f"{n} gets no mrmlSceneChanged -> setMRMLScene connection" for n in sorted(needs - connected)]


# ---------------------------------------------------------------------------------------------------- module .py


def _tree(py_path):
    return ast.parse(_read(py_path), filename=py_path)


def self_ui_names(py_path):
    """Names used as ``self.ui.<name>`` in the module."""
    return {
        node.attr
        for node in ast.walk(_tree(py_path))
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Attribute)
        and node.value.attr == "ui"
        and isinstance(node.value.value, ast.Name)
        and node.value.value.id == "self"
    }


def parameter_node_class(py_path):
    """The class decorated with @parameterNodeWrapper."""
    for node in _tree(py_path).body:
        if isinstance(node, ast.ClassDef):
            for d in node.decorator_list:
                if (isinstance(d, ast.Name) and d.id == "parameterNodeWrapper") or (
                        isinstance(d, ast.Attribute) and d.attr == "parameterNodeWrapper"):
                    return node
    return None


def parameter_fields(py_path):
    """{field name: (annotation node, default node or None)} of the parameter node wrapper class."""
    cls = parameter_node_class(py_path)
    if cls is None:
        return {}
    return {
        n.target.id: (n.annotation, n.value)
        for n in cls.body
        if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)
    }


def _base_type(annotation):
    """'FloatRange' for Annotated[FloatRange, ...], 'Path' for pathlib.Path, 'bool' for bool, ..."""
    node = annotation
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id in (
            "Annotated", "Optional"):
        inner = node.slice
        node = inner.elts[0] if isinstance(inner, ast.Tuple) else inner
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Name):
        return node.id
    return ast.unparse(node)


def _annotation_calls(annotation):
    return {n.func.id for n in ast.walk(annotation) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}


def module_enums(py_path):
    """Names of the enum.Enum subclasses defined at the module's top level."""
    return {
        node.name
        for node in _tree(py_path).body
        if isinstance(node, ast.ClassDef) and any(ast.unparse(b) in ("enum.Enum", "Enum") for b in node.bases)
    }


def connector_problem(widget_class, annotation, enums=frozenset()):
    """Why Slicer's parameterNodeWrapper could not connect this widget class to this field type (None if it can).

    Mirrors the canRepresent() rules of slicer/parameterNodeWrapper/guiConnectors.py, which match exact classes.
    ``enums``: names of Enum classes (a QComboBox shows their members, with their ``label()`` if defined).
    """
    base = _base_type(annotation)
    calls = _annotation_calls(annotation)
    rules = {
        "qMRMLNodeComboBox": (base.startswith("vtkMRML") and base.endswith("Node"), "a vtkMRML...Node type"),
        "ctkRangeWidget": (base == "FloatRange" and "RangeBounds" in calls, "Annotated[FloatRange, RangeBounds(..)]"),
        "QCheckBox": (base == "bool", "bool"),
        "ctkCheckBox": (base == "bool", "bool"),
        "QDoubleSpinBox": (base in ("float", "int"), "float or int"),
        "ctkDoubleSpinBox": (base in ("float", "int"), "float or int"),
        "ctkSliderWidget": (base in ("float", "int"), "float or int"),
        "QSpinBox": (base == "int", "int"),
        "QSlider": (base == "int", "int"),
        "ctkPathLineEdit": (base in ("Path", "PurePath", "PosixPath", "WindowsPath"), "pathlib.Path"),
        "ctkDirectoryButton": (base in ("Path", "PurePath", "PosixPath", "WindowsPath"), "pathlib.Path"),
        "QComboBox": ((base in ("str", "int", "float", "bool") and "Choice" in calls) or base in enums,
                      "Annotated[str, Choice([...])] (or an Enum)"),
        "QLineEdit": (base == "str", "str"),
        "QLabel": (base == "str", "str"),
    }
    if widget_class not in rules:
        return f"{widget_class} has no parameterNodeWrapper connector in this guard's table"
    ok, needed = rules[widget_class]
    return None if ok else f"{widget_class} needs {needed}, the field is {ast.unparse(annotation)}"


def check_ui_names_used_by_widget(py_path, ui_path):
    missing = sorted(self_ui_names(py_path) - set(ui_widgets(ui_path)))
    return [f"self.ui.{n} is used in {os.path.basename(py_path)} but there is no such widget in the .ui"
            for n in missing]


def check_parameter_bindings(py_path, ui_path):
    """Every SlicerParameterName maps to a field whose type the widget can show; every field is used somewhere."""
    fields = parameter_fields(py_path)
    if not fields:
        return ["no @parameterNodeWrapper class with annotated fields in the module"]
    bindings, problems = ui_parameter_bindings(ui_path)
    enums = module_enums(py_path)
    for pname, (wname, wclass) in sorted(bindings.items()):
        if pname not in fields:
            problems.append(f"{wname} has SlicerParameterName {pname!r}, which is not a parameter node field")
            continue
        reason = connector_problem(wclass, fields[pname][0], enums)
        if reason:
            problems.append(f"{wname} -> {pname}: {reason}")
    source = _read(py_path)
    for name in sorted(set(fields) - set(bindings)):
        # Fields without a widget must at least be read or written by the code.
        if len(re.findall(rf"\.{name}\b", source)) == 0:
            problems.append(f"parameter field {name!r} is neither bound in the .ui nor used in the code")
    return problems


# Qt's default (minimum, maximum) of spin boxes, for range properties the .ui leaves unset.
SPIN_BOX_DEFAULT_RANGE = {"QDoubleSpinBox": (0.0, 99.99), "ctkDoubleSpinBox": (0.0, 99.99), "QSpinBox": (0, 99)}


def check_ui_defaults_match_fields(py_path, ui_path):
    """The .ui shows the same defaults as the parameter node (Designer previews and a fresh scene agree)."""
    fields = parameter_fields(py_path)
    bindings, _ = ui_parameter_bindings(ui_path)
    problems = []
    for pname, (wname, wclass) in bindings.items():
        if pname not in fields:
            continue
        annotation, default = fields[pname]
        base = _base_type(annotation)
        if base == "bool" and isinstance(default, ast.Constant):
            shown = ui_widget_property(ui_path, wname, "checked") or "false"
            if (shown == "true") != bool(default.value):
                problems.append(f"{wname} is checked={shown} in the .ui, the default of {pname} is {default.value}")
        elif base in ("float", "int") and isinstance(default, ast.Constant):
            shown = ui_widget_property(ui_path, wname, "value")
            if shown is None or float(shown) != float(default.value):
                problems.append(f"{wname} shows value {shown} in the .ui, the default of {pname} is {default.value}")
            bounds = [c for c in ast.walk(annotation) if isinstance(c, ast.Call) and getattr(c.func, "id", "") ==
                      "WithinRange"]
            if bounds and wclass in SPIN_BOX_DEFAULT_RANGE:
                # The connector sets the widget's range from WithinRange; the .ui should preview the same range
                # (an unset property is the Qt default).
                lo, hi = (float(ast.literal_eval(a)) for a in bounds[0].args)
                shown_range = [float(ui_widget_property(ui_path, wname, k) or d)
                               for k, d in zip(("minimum", "maximum"), SPIN_BOX_DEFAULT_RANGE[wclass])]
                if shown_range != [lo, hi]:
                    problems.append(f"{wname} range {shown_range} differs from WithinRange({lo:g}, {hi:g}) of {pname}")
        elif base == "str" and wclass == "QLineEdit" and isinstance(default, ast.Constant):
            shown = ui_widget_property(ui_path, wname, "text") or ""
            if shown != default.value:
                problems.append(f"{wname} shows text {shown!r} in the .ui, the default of {pname} is {default.value!r}")
        elif base == "FloatRange":
            bounds = [c for c in ast.walk(annotation) if isinstance(c, ast.Call) and getattr(c.func, "id", "") ==
                      "RangeBounds"]
            lo, hi = (ast.literal_eval(a) for a in bounds[0].args)
            shown = [float(ui_widget_property(ui_path, wname, k) or "nan") for k in ("minimum", "maximum")]
            if shown != [lo, hi]:
                problems.append(f"{wname} range {shown} differs from RangeBounds({lo}, {hi}) of {pname}")
    return problems


def _imports(tree):
    """[(module name, is top level, enclosing function name or None, line)] for every import."""
    out = []

    def visit(node, func):
        for child in ast.iter_child_nodes(node):
            name = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else func
            if isinstance(child, ast.Import):
                out.extend((a.name, func is None, func, child.lineno) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                module = ("." * child.level) + (child.module or "")
                out.extend((module, func is None, func, child.lineno) for _ in [0])
            visit(child, name)

    visit(tree, None)
    return out


def check_module_imports(py_path):
    """The module imports only what Slicer provides, each at a place where it is sure to be importable."""
    source = _read(py_path)
    try:
        tree = ast.parse(source, filename=py_path)
        compile(tree, py_path, "exec")
    except SyntaxError as e:
        return [f"{py_path} does not compile: {e}"]
    stdlib = _stdlib()
    problems = []
    for module, top, func, line in _imports(tree):
        root = module.split(".")[0]
        where = f"line {line} ({'top level' if top else func + '()'})"
        if root in stdlib:
            continue
        if root in FIRST_USE_PACKAGES:
            if func != "ensureDependencies":
                problems.append(f"{module} imported at {where}: only ensureDependencies() may touch it")
        elif top:
            if root not in SLICER_TOP_LEVEL and module not in ENGINE_TOP_LEVEL:
                problems.append(f"{module} imported at {where}: at top level only {sorted(SLICER_TOP_LEVEL)} and "
                                f"{sorted(ENGINE_TOP_LEVEL)} are safe (the engine may need packages installed on "
                                "first use)")
        elif root not in SLICER_IN_FUNCTIONS:
            problems.append(f"{module} imported at {where}: Slicer does not provide it")
    return problems


def _engine_defines(module):
    path = os.path.join(ENGINE_DIR, *module.split(".")) + ".py"
    if not os.path.isfile(path):
        return None
    tree = _tree(path)
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def check_engine_names_exist(py_path, engine_dir=None):
    """Every engine name the module imports or uses (``from Lib.x import y``, ``Lib.x.y``) is defined there."""
    tree = _tree(py_path)
    problems = []
    module_aliases = {}  # local name -> engine module
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == ENGINE:
            sub = node.module[len(ENGINE) + 1:]
            for alias in node.names:
                if not sub:  # from Lib import module
                    if _engine_defines(alias.name) is None:
                        problems.append(f"{ENGINE}.{alias.name} does not exist")
                    module_aliases[alias.asname or alias.name] = alias.name
                    continue
                defined = _engine_defines(sub)
                if defined is None:
                    problems.append(f"{node.module} does not exist")
                elif alias.name not in defined:
                    problems.append(f"{node.module} has no {alias.name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in module_aliases:
            defined = _engine_defines(module_aliases[node.value.id]) or set()
            if node.attr not in defined:
                problems.append(f"{ENGINE}.{module_aliases[node.value.id]} has no {node.attr}")
    return sorted(set(problems))


def check_slicer_util_names(py_path):
    """``slicer.util.X`` names exist (slicer-core ships the same slicer/util.py as the application)."""
    import slicer.util

    tree = _tree(py_path)
    problems = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "util"
                and isinstance(node.value.value, ast.Name) and node.value.value.id == "slicer"):
            if not hasattr(slicer.util, node.attr):
                problems.append(f"slicer.util.{node.attr} does not exist (line {node.lineno})")
        # Top-level aliases of slicer.util functions are not reliable: always write slicer.util.X.
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "slicer"
                and not node.attr.startswith(("vtk", "qSlicer", "qMRML")) and node.attr not in (
                    "util", "app", "mrmlScene", "modules", "i18n", "ScriptedLoadableModule", "parameterNodeWrapper",
                    "packaging")):
            problems.append(f"slicer.{node.attr} (line {node.lineno}): use slicer.util.{node.attr} or a module")
    return problems


def _class(tree, name):
    return next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name), None)


def check_module_structure(py_path):
    """The scripted-module template's classes, methods and settings are there."""
    tree = _tree(py_path)
    source = _read(py_path)
    problems = []
    expected = {
        MODULE_NAME: ["ScriptedLoadableModule"],
        f"{MODULE_NAME}Widget": ["ScriptedLoadableModuleWidget", "VTKObservationMixin"],
        f"{MODULE_NAME}Logic": ["ScriptedLoadableModuleLogic"],
        f"{MODULE_NAME}Test": ["ScriptedLoadableModuleTest"],
    }
    for name, bases in expected.items():
        cls = _class(tree, name)
        if cls is None:
            problems.append(f"class {name} is missing")
            continue
        found = [ast.unparse(b) for b in cls.bases]
        if found != bases:
            problems.append(f"class {name} derives from {found}, expected {bases}")
    widget = _class(tree, f"{MODULE_NAME}Widget")
    if widget is not None:
        methods = {n.name for n in widget.body if isinstance(n, ast.FunctionDef)}
        problems += [f"{MODULE_NAME}Widget.{m}() is missing" for m in WIDGET_METHODS if m not in methods]
        if "connectGui" not in ast.unparse(widget):
            problems.append("the widget does not bind the GUI with connectGui")
    test = _class(tree, f"{MODULE_NAME}Test")
    if test is not None:
        methods = {n.name for n in test.body if isinstance(n, ast.FunctionDef)}
        run = next((n for n in test.body if isinstance(n, ast.FunctionDef) and n.name == "runTest"), None)
        called = {n.func.attr for n in ast.walk(run) if isinstance(n, ast.Call)
                  and isinstance(n.func, ast.Attribute)} if run else set()
        tests = {m for m in methods if m.startswith("test_")}
        if not tests:
            problems.append("the self-test class has no test_ methods")
        problems += [f"runTest() does not call {m}()" for m in sorted(tests - called)]
    module = _class(tree, MODULE_NAME)
    if module is not None:
        text = ast.unparse(module)
        if "'Patient Implant Planner'" not in text:
            problems.append('the module title is not "Patient Implant Planner"')
        if "'Planning'" not in text:
            problems.append('the module category is not "Planning"')
        for attr in ("contributors", "helpText", "acknowledgementText"):
            if f"parent.{attr}" not in text:
                problems.append(f"parent.{attr} is not set")
        if "registerSampleData" not in text:
            problems.append("the module does not register its sample data at startup")
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    for name in ("registerSampleData", "ensureDependencies"):
        if name not in functions:
            problems.append(f"function {name}() is missing")
    if "ensureDependencies" in functions:
        text = ast.unparse(functions["ensureDependencies"])
        for needed in ("slicer.util.confirmOkCancelDisplay", "slicer.util.pip_install"):
            if needed not in text:
                problems.append(f"ensureDependencies() does not call {needed}")
    if source.count("pip_install(") != sum(ast.unparse(f).count("pip_install(") for f in functions.values()
                                           if f.name == "ensureDependencies"):
        problems.append("pip_install is called outside ensureDependencies() (never install without asking)")
    if "registerSampleData" in functions:
        text = ast.unparse(functions["registerSampleData"])
        if "registerCustomSampleDataSource" not in text or "as_uri()" not in text:
            problems.append("registerSampleData() must register the bundled CT by a file:// URI (no network)")
    return problems


def check_resources_referenced_exist(py_path, module_dir):
    """Icons and .ui files named in the module exist under Resources/."""
    present = set()
    for _dirpath, _, files in os.walk(os.path.join(module_dir, "Resources")):
        present.update(files)
    problems = []
    for node in ast.walk(_tree(py_path)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
            if re.fullmatch(r"[\w./-]+\.(png|ui)", text):
                if os.path.basename(text) not in present and "Resources" not in text:
                    problems.append(f"{text!r} is referenced but no such file is under Resources/")
    # resourcePath("UI/x.ui") style
    for m in re.finditer(r"resourcePath\(\s*[\"']([^\"']+)[\"']", _read(py_path)):
        if not os.path.isfile(os.path.join(module_dir, "Resources", m.group(1))):
            problems.append(f"resourcePath({m.group(1)!r}) does not exist")
    return problems


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
    sets = cmake_sets(_read(cmake_path))
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
    text = _strip_cmake_comments(_read(cmake_path))
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
    text = _read(cmake_path)
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
    homepage = (cmake_sets(_read(top_cmake)).get("EXTENSION_HOMEPAGE") or [""])[0]
    if str(entry.get("scm_url", "")).removesuffix(".git") != homepage:
        problems.append(f"scm_url {entry.get('scm_url')!r} is not the EXTENSION_HOMEPAGE repository {homepage!r}")
    tier = entry.get("tier", 1)
    if not isinstance(tier, int) or not 1 <= tier <= 5:
        problems.append("tier must be an integer 1..5")
    return problems


# ----------------------------------------------------------------------------------------------------------- icon


def check_icon(png_path, size=(128, 128)):
    from PIL import Image, ImageStat

    try:
        with open(png_path, "rb") as f:
            if f.read(8) != b"\x89PNG\r\n\x1a\n":
                return [f"{png_path} is not a PNG file"]
        image = Image.open(png_path)
        image.load()
    except OSError as e:
        return [f"{png_path} cannot be read: {e}"]
    problems = []
    if image.size != size:
        problems.append(f"icon is {image.size[0]}x{image.size[1]}, expected {size[0]}x{size[1]}")
    rgba = image.convert("RGBA")
    alpha = rgba.getchannel("A")
    opaque = sum(1 for a in alpha.get_flattened_data() if a > 127) / (rgba.width * rgba.height)
    if opaque < 0.2:
        problems.append(f"icon is mostly transparent ({opaque:.0%} opaque pixels)")
    grey = rgba.convert("L")
    stddev = ImageStat.Stat(grey, mask=alpha.point(lambda a: 255 if a > 127 else 0)).stddev[0] if opaque else 0
    colours = len(set(rgba.get_flattened_data()))
    if stddev < 10 or colours < 16:
        problems.append(f"icon looks blank (grey std {stddev:.1f}, {colours} colours)")
    return problems


# ------------------------------------------------------------------------------------------------- engine purity

# GUI-only parts of Slicer that the engine must never touch (it also runs headless on slicer-core).
ENGINE_FORBIDDEN_IMPORTS = {"qt", "ctk", "PythonQt", "SampleData", "slicer.ScriptedLoadableModule",
                            "slicer.parameterNodeWrapper", "slicer.i18n", "slicer.packaging"}
ENGINE_FORBIDDEN_UTIL = {"errorDisplay", "warningDisplay", "infoDisplay", "confirmOkCancelDisplay",
                         "confirmYesNoDisplay", "confirmRetryCloseDisplay", "delayDisplay", "messageBox", "loadUI",
                         "childWidgetVariables", "mainWindow", "pip_install", "pip_uninstall", "showStatusMessage",
                         "tryWithErrorDisplay", "WaitCursor", "MessageDialog", "findChild", "findChildren"}
# The one sanctioned bridge: context_from_slicer() wraps the running application's scene and logics.
ENGINE_APP_BRIDGE = ("context.py", "context_from_slicer")


def _attributes_with_function(tree):
    """(attribute node, name of the outermost function containing it or None) for every attribute access."""
    out = []

    def visit(node, func):
        for child in ast.iter_child_nodes(node):
            inner = func or (child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else None)
            if isinstance(child, ast.Attribute):
                out.append((child, inner))
            visit(child, inner)

    visit(tree, None)
    return out


def check_engine_is_qt_free(engine_dir):
    problems = []
    for dirpath, dirnames, files in os.walk(engine_dir):
        dirnames[:] = [d for d in dirnames if d not in IGNORED_DIRS]
        for f in sorted(files):
            if not f.endswith(".py"):
                continue
            path = os.path.join(dirpath, f)
            rel = os.path.relpath(path, engine_dir)
            tree = _tree(path)
            for module, _top, _func, line in _imports(tree):
                if module in ENGINE_FORBIDDEN_IMPORTS or module.split(".")[0] in ENGINE_FORBIDDEN_IMPORTS:
                    problems.append(f"{rel}:{line} imports {module}")
            for node, func in _attributes_with_function(tree):
                chain = ast.unparse(node)
                if chain.startswith(("slicer.app", "slicer.modules")) and (rel, func) != ENGINE_APP_BRIDGE:
                    problems.append(f"{rel}:{node.lineno} uses {'.'.join(chain.split('.')[:2])}")
                if chain.startswith("slicer.util.") and node.attr in ENGINE_FORBIDDEN_UTIL:
                    problems.append(f"{rel}:{node.lineno} calls GUI function slicer.util.{node.attr}")
    return sorted(set(problems))


# ====================================================================================================== the tests


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


def test_every_module_file_is_listed_in_cmake():
    scripts, resources = module_files_on_disk(MODULE_DIR)
    assert f"{MODULE_NAME}.py" in scripts and f"{ENGINE}/__init__.py" in scripts
    assert f"Resources/UI/{MODULE_NAME}.ui" in resources
    assert check_module_cmake(MODULE_CMAKE, MODULE_DIR) == []


def test_extension_cmake_has_the_metadata():
    assert check_top_cmake(TOP_CMAKE) == []


def test_extension_index_json():
    assert check_extension_json(EXTENSION_JSON, TOP_CMAKE) == []


def test_icon_is_a_real_128_png():
    assert check_icon(ICON) == []


def test_engine_is_qt_free():
    assert check_engine_is_qt_free(ENGINE_DIR) == []


# ------------------------------------------------------------------------------------- the guards can fail


@pytest.fixture
def broken(tmp_path):
    """A copy of the module folder, both CMakeLists, the JSON; returns paths to edit."""
    module_dir = tmp_path / MODULE_NAME
    shutil.copytree(MODULE_DIR, module_dir, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(TOP_CMAKE, tmp_path / "CMakeLists.txt")
    shutil.copy(EXTENSION_JSON, tmp_path / os.path.basename(EXTENSION_JSON))
    return types.SimpleNamespace(
        root=tmp_path,
        module_dir=str(module_dir),
        py=str(module_dir / f"{MODULE_NAME}.py"),
        ui=str(module_dir / "Resources" / "UI" / f"{MODULE_NAME}.ui"),
        icon=str(module_dir / "Resources" / "Icons" / f"{MODULE_NAME}.png"),
        cmake=str(module_dir / "CMakeLists.txt"),
        top_cmake=str(tmp_path / "CMakeLists.txt"),
        json=str(tmp_path / os.path.basename(EXTENSION_JSON)),
        engine=str(module_dir / ENGINE),
    )


def _edit(path, old, new, count=1):
    text = _read(path)
    assert old in text, f"test setup: {old!r} not in {path}"
    with open(path, "w", encoding="utf-8") as f:
        f.write(text.replace(old, new, count))


def test_guards_pass_on_the_unbroken_copy(broken):
    assert check_ui_parses(broken.ui) == []
    assert check_module_cmake(broken.cmake, broken.module_dir) == []
    assert check_top_cmake(broken.top_cmake) == []
    assert check_extension_json(broken.json, broken.top_cmake) == []
    assert check_icon(broken.icon) == []
    assert check_engine_is_qt_free(broken.engine) == []


def test_guard_fails_on_invalid_ui_xml(broken):
    _edit(broken.ui, "</ui>", "")
    assert check_ui_parses(broken.ui)


def test_guard_fails_on_missing_scene_connection(broken):
    _edit(broken.ui, "<receiver>inputVolumeSelector</receiver>", "<receiver>nothing</receiver>")
    assert check_mrml_scene_connections(broken.ui) == ["inputVolumeSelector gets no mrmlSceneChanged -> "
                                                       "setMRMLScene connection"]


def test_guard_fails_on_control_missing_from_ui(broken):
    _edit(broken.ui, 'name="segmentBoneButton"', 'name="segmentButtonRenamed"')
    assert any("self.ui.segmentBoneButton" in p for p in check_ui_names_used_by_widget(broken.py, broken.ui))


def test_guard_fails_on_unknown_parameter_name(broken):
    _edit(broken.ui, "<string>smoothingMm</string>", "<string>smoothingMillimetres</string>")
    problems = check_parameter_bindings(broken.py, broken.ui)
    assert any("'smoothingMillimetres', which is not a parameter node field" in p for p in problems)


def test_guard_fails_on_widget_that_cannot_show_the_field_type(broken):
    # A QCheckBox bound to an int field: parameterNodeWrapper would raise when the module opens.
    _edit(broken.py, "fillInterior: bool = True", "fillInterior: int = 1")
    problems = check_parameter_bindings(broken.py, broken.ui)
    assert problems == ["fillInteriorCheckBox -> fillInterior: QCheckBox needs bool, the field is int"]
    _edit(broken.ui, "<string>smoothingMm</string>", "<string>minIslandMm3</string>")
    assert any("bound to both" in p for p in check_parameter_bindings(broken.py, broken.ui))


def test_guard_fails_on_range_widget_without_bounds(broken):
    _edit(broken.py, "Annotated[FloatRange, RangeBounds(-1024, 3071), Default(FloatRange(226, 3071))]",
          "Annotated[FloatRange, Default(FloatRange(226, 3071))]")
    assert any("RangeBounds" in p for p in check_parameter_bindings(broken.py, broken.ui))


def test_guard_fails_on_enum_field_without_enum(broken):
    _edit(broken.py, "class Placement(enum.Enum):", "class Placement:")
    problems = check_parameter_bindings(broken.py, broken.ui)
    assert problems == ["placementComboBox -> placement: QComboBox needs Annotated[str, Choice([...])] (or an Enum), "
                        "the field is Placement"]


def test_guard_fails_on_int_text_and_range_that_differ(broken):
    _edit(broken.py, "screwsPerEnd: Annotated[int, WithinRange(1, 4)] = 2",
          "screwsPerEnd: Annotated[int, WithinRange(1, 4)] = 3")
    _edit(broken.py, 'caseId: str = "CASE-001"', 'caseId: str = "CASE-002"')
    _edit(broken.py, "diameterMm: Annotated[float, WithinRange(1, 40)] = 12.0",
          "diameterMm: Annotated[float, WithinRange(1, 30)] = 12.0")
    problems = check_ui_defaults_match_fields(broken.py, broken.ui)
    assert any(p.startswith("screwsPerEndSpinBox shows value 2") for p in problems)
    assert any(p.startswith("caseIdLineEdit shows text 'CASE-001'") for p in problems)
    assert any(p.startswith("diameterSpinBox range [1.0, 40.0] differs from WithinRange(1, 30)") for p in problems)
    assert len(problems) == 3


def test_guard_fails_on_ui_default_that_differs(broken):
    _edit(broken.py, "minIslandMm3: Annotated[float, WithinRange(0, 1_000_000)] = 1000.0",
          "minIslandMm3: Annotated[float, WithinRange(0, 1_000_000)] = 500.0")
    assert any("minIslandSpinBox" in p for p in check_ui_defaults_match_fields(broken.py, broken.ui))


def test_guard_fails_on_unsafe_imports(broken):
    _edit(broken.py, "import qt\n", "import qt\nimport pandas\nimport manifold3d\n")
    _edit(broken.py, "from PatientImplantPlannerLib.errors import", "from PatientImplantPlannerLib.mesh import "
          "TriMesh\nfrom PatientImplantPlannerLib.errors import")
    problems = check_module_imports(broken.py)
    assert any(p.startswith("pandas") for p in problems)
    assert any(p.startswith("manifold3d") for p in problems)
    assert any(p.startswith("PatientImplantPlannerLib.mesh") for p in problems)


def test_guard_fails_on_syntax_error(broken):
    _edit(broken.py, "def ensureDependencies() -> bool:", "def ensureDependencies() -> bool")
    assert any("does not compile" in p for p in check_module_imports(broken.py))


def test_guard_fails_on_misspelt_engine_and_util_names(broken):
    _edit(broken.py, "import segment_bone", "import segment_bones")
    _edit(broken.py, "slicer.util.confirmOkCancelDisplay(", "slicer.util.confirmOKCancelDisplay(")
    _edit(broken.py, "slicer.util.errorDisplay(", "slicer.errorDisplay(")
    assert check_engine_names_exist(broken.py) == [f"{ENGINE}.bonesegmentation has no segment_bones"]
    problems = check_slicer_util_names(broken.py)
    assert any("slicer.util.confirmOKCancelDisplay does not exist" in p for p in problems)
    assert any(p.startswith("slicer.errorDisplay") for p in problems)


def test_guard_fails_on_template_deviation(broken):
    _edit(broken.py, "def onSceneEndClose(", "def onSceneEnded(")
    _edit(broken.py, '_("Patient Implant Planner")', '_("PatientImplantPlanner")')
    _edit(broken.py, "        self.test_LoadSampleCT()\n", "")
    problems = check_module_structure(broken.py)
    assert f"{MODULE_NAME}Widget.onSceneEndClose() is missing" in problems
    assert 'the module title is not "Patient Implant Planner"' in problems
    assert "runTest() does not call test_LoadSampleCT()" in problems


def test_guard_fails_on_unlisted_or_missing_files(broken):
    with open(os.path.join(broken.module_dir, ENGINE, "newfeature.py"), "w") as f:
        f.write("")
    with open(os.path.join(broken.module_dir, "Resources", "Icons", "extra.png"), "wb") as f:
        f.write(b"")
    os.remove(os.path.join(broken.module_dir, ENGINE, "errors.py"))
    problems = check_module_cmake(broken.cmake, broken.module_dir)
    assert f"{ENGINE}/newfeature.py is not listed in MODULE_PYTHON_SCRIPTS" in problems
    assert "Resources/Icons/extra.png is not listed in MODULE_PYTHON_RESOURCES" in problems
    assert f"{ENGINE}/errors.py is listed in MODULE_PYTHON_SCRIPTS but does not exist" in problems


def test_guard_fails_on_missing_build_macro_pieces(broken):
    _edit(broken.cmake, "  WITH_GENERIC_TESTS\n", "")
    _edit(broken.cmake, "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)", "")
    problems = check_module_cmake(broken.cmake, broken.module_dir)
    assert "slicerMacroBuildScriptedModule has no WITH_GENERIC_TESTS" in problems
    assert any("slicer_add_python_unittest" in p for p in problems)


def test_guard_fails_on_bad_extension_metadata(broken):
    _edit(broken.top_cmake, 'set(EXTENSION_CATEGORY "Planning")', 'set(EXTENSION_CATEGORY "Examples")')
    _edit(broken.top_cmake, "set(EXTENSION_ICONURL", "#set(EXTENSION_ICONURL")
    _edit(broken.top_cmake, "include(${Slicer_EXTENSION_CPACK})", "")
    problems = check_top_cmake(broken.top_cmake)
    assert any(p.startswith("EXTENSION_CATEGORY") for p in problems)
    assert "EXTENSION_ICONURL is not set" in problems
    assert any("Slicer_EXTENSION_CPACK" in p for p in problems)


def test_guard_fails_on_bad_extension_json(broken):
    _edit(broken.json, '"Planning"', '"Examples"')
    _edit(broken.json, '"tier"', '"maturity"')
    problems = check_extension_json(broken.json, broken.top_cmake)
    assert "category is 'Examples', expected 'Planning'" in problems
    assert "key 'maturity' is not in the catalog entry schema" in problems
    _edit(broken.json, "{", "{,")
    assert "does not parse" in check_extension_json(broken.json, broken.top_cmake)[0]


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


# ------------------------------------------------------------- running the module's logic and self-test headless


def _stand_in_modules(tmp_path, ctx):
    """Minimal stand-ins for the GUI-only packages the module imports (the real ones need the Slicer app)."""
    from PatientImplantPlannerLib.ctimport import load_ct

    def module(name, **attrs):
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        return m

    class Annotation:
        def __init__(self, *args, **kwargs):
            self.args, self.kwargs = args, kwargs

    class FloatRange:
        def __init__(self, minimum=0.0, maximum=0.0):
            self.minimum, self.maximum = minimum, maximum

    class Default(Annotation):
        pass

    def parameterNodeWrapper(cls):
        """Like Slicer's wrapper for reading and writing fields: each starts at its declared default (class value,
        or Default(...) annotation; None for node and path fields). Values live on the Python object only."""

        def __init__(self, parameterNode=None):
            self.parameterNode = parameterNode
            for name, hint in cls.__annotations__.items():
                if name in cls.__dict__:
                    value = cls.__dict__[name]
                else:
                    defaults = [m for m in getattr(hint, "__metadata__", ()) if isinstance(m, Default)]
                    value = defaults[0].args[0] if defaults else None
                setattr(self, name, value)

        return type(cls.__name__, (cls,), {"__init__": __init__})

    class ScriptedLoadableModule:
        def __init__(self, parent):
            self.parent = parent

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None):
            self.parent = parent

    class QTimer:
        """Single-shot timer driven by the test: fire() runs the slot as the event loop would."""

        def __init__(self):
            self.active, self.interval, self.slot = False, 0, None

        def setSingleShot(self, on):
            pass

        def setInterval(self, ms):
            self.interval = ms

        def connect(self, signal, slot):
            self.slot = slot

        def start(self):
            self.active = True

        def stop(self):
            self.active = False

        def isActive(self):
            return self.active

        def fire(self):
            assert self.active, "the timer was not started"
            self.active = False
            self.slot()

    class ScriptedLoadableModuleLogic:
        def getParameterNode(self):
            import slicer

            return slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScriptedModuleNode")

    class ScriptedLoadableModuleTest(unittest.TestCase):
        def delayDisplay(self, message, msec=None):
            pass

    sources = {}

    class SampleDataLogic:
        """Does what Slicer's SampleData does with a registered source: urlretrieve into a cache, check the
        SHA256, load the file as a volume."""

        @staticmethod
        def registerCustomSampleDataCategory(category, title):
            pass

        @staticmethod
        def registerCustomSampleDataSource(category="Custom", sampleName=None, uris=None, fileNames=None,
                                           nodeNames=None, checksums=None, **kwargs):
            sources[sampleName] = dict(uris=uris, fileNames=fileNames, nodeNames=nodeNames, checksums=checksums)

    def downloadSample(name):
        import urllib.request

        src = sources[name]
        path = str(tmp_path / "cache" / src["fileNames"])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        urllib.request.urlretrieve(src["uris"], path)
        algo, digest = src["checksums"].split(":")
        assert algo == "SHA256"
        with open(path, "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == digest, "sample data checksum mismatch"
        return load_ct(ctx, path, name=src["nodeNames"])

    class App:
        defaultScenePath = str(tmp_path)

        def testingEnabled(self):
            return True

        def setOverrideCursor(self, cursor):
            pass

        def restoreOverrideCursor(self):
            pass

        def processEvents(self):
            pass

        def connect(self, signal, slot):
            self.connected = (signal, slot)

    return {
        "qt": module("qt", QTimer=QTimer, Qt=types.SimpleNamespace(WaitCursor=3), QTableWidgetItem=str),
        "ctk": module("ctk"),
        "slicer.i18n": module("slicer.i18n", tr=lambda text: text, translate=lambda context, text: text),
        "slicer.parameterNodeWrapper": module(
            "slicer.parameterNodeWrapper", parameterNodeWrapper=parameterNodeWrapper, FloatRange=FloatRange,
            Choice=Annotation, Default=Default, RangeBounds=Annotation, WithinRange=Annotation),
        "slicer.ScriptedLoadableModule": module(
            "slicer.ScriptedLoadableModule", ScriptedLoadableModule=ScriptedLoadableModule,
            ScriptedLoadableModuleWidget=ScriptedLoadableModuleWidget,
            ScriptedLoadableModuleLogic=ScriptedLoadableModuleLogic,
            ScriptedLoadableModuleTest=ScriptedLoadableModuleTest),
        "SampleData": module("SampleData", SampleDataLogic=SampleDataLogic, downloadSample=downloadSample),
    }, App()


@pytest.fixture
def slicer_module(ctx, tmp_path, monkeypatch):
    """The module file imported against the headless core; the engine context is the test's fresh scene."""
    import slicer

    import PatientImplantPlannerLib.context as context

    stand_ins, app = _stand_in_modules(tmp_path, ctx)
    for name, mod in stand_ins.items():
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.setattr(slicer, "app", app, raising=False)
    monkeypatch.setattr(context, "context_from_slicer", lambda: ctx)
    spec = importlib.util.spec_from_file_location("PatientImplantPlannerUnderTest", MODULE_PY)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_module_metadata_at_runtime(slicer_module):
    parent = types.SimpleNamespace()
    slicer_module.PatientImplantPlanner(parent)
    assert parent.title == "Patient Implant Planner"
    assert parent.categories == ["Planning"]
    assert "TotalSegmentator" in parent.acknowledgementText  # the sample data attribution
    import slicer

    assert slicer.app.connected == ("startupCompleted()", slicer_module.registerSampleData)


def test_ensure_dependencies_never_installs_in_testing_mode(slicer_module, monkeypatch):
    import slicer

    calls = []
    monkeypatch.setattr(slicer.util, "pip_install", lambda *a, **k: calls.append(a))
    assert slicer_module.ensureDependencies() is True  # manifold3d is installed here
    monkeypatch.setitem(slicer_module.REQUIRED_PACKAGES, "surely_not_installed_pkg", "surely_not_installed_pkg")
    assert slicer_module.ensureDependencies() is False
    assert calls == []


def test_sample_data_registration_loads_the_bundled_ct_without_network(slicer_module):
    """registerSampleData()'s file:// URI and checksum work with urllib, as Slicer's SampleData uses them."""
    slicer_module.PatientImplantPlannerTest().test_LoadSampleCT()


def test_self_test_runs_on_the_headless_core(slicer_module):
    """The module's own self-test, run here: phantom segmentation + export, and the sample CT via SampleData."""
    pytest.importorskip(f"{ENGINE}.bonesegmentation")
    pytest.importorskip(f"{ENGINE}.phantom")
    case = slicer_module.PatientImplantPlannerTest()
    case.runTest()


def test_self_test_can_fail(slicer_module, monkeypatch):
    """A logic that returns a wrong volume makes the self-test fail."""
    pytest.importorskip(f"{ENGINE}.bonesegmentation")
    logic_cls = slicer_module.PatientImplantPlannerLogic
    real = logic_cls.segmentBone

    def half_volume(self, *args, **kwargs):
        result = real(self, *args, **kwargs)
        result.volume_mm3 *= 0.5
        return result

    monkeypatch.setattr(logic_cls, "segmentBone", half_volume)
    with pytest.raises(AssertionError):
        slicer_module.PatientImplantPlannerTest().test_BoneSegmentationPhantom()


def test_planning_defaults_are_the_engine_defaults(slicer_module):
    """A fresh parameter node gives exactly the engine's default implant, screws, variants, placement and export
    settings, and the GUI's fixed lists (screw types, export parts, enums) match the engine's."""
    from PatientImplantPlannerLib.bundle import ALL_PARTS, ExportParameters
    from PatientImplantPlannerLib.guides import GuideParameters
    from PatientImplantPlannerLib.implant import PROFILES, ImplantParameters
    from PatientImplantPlannerLib.lattice import LatticeParameters
    from PatientImplantPlannerLib.plan import PLACEMENTS, Plan
    from PatientImplantPlannerLib.screws import SCREW_CATALOGUE, ScrewParameters

    logic = slicer_module.PatientImplantPlannerLogic()
    p = logic.getParameterNode()
    assert logic.implantParameters(p) == ImplantParameters()
    assert logic.screwParameters(p) == ScrewParameters()
    plan = Plan()
    assert logic.parseVariants(p.variantsMm) == plan.variants_mm
    assert (p.placement.value, p.caseId) == (plan.placement, plan.case_id)
    assert logic.bundleParameters(p) == (ExportParameters(), LatticeParameters(), GuideParameters())
    assert slicer_module.SCREW_TYPES == list(SCREW_CATALOGUE)
    assert set(slicer_module.EXPORT_PART_FIELDS) == set(ALL_PARTS)
    assert [m.value for m in slicer_module.Placement] == list(PLACEMENTS)
    assert [m.value for m in slicer_module.StrutProfile] == list(PROFILES)
    # The .ui previews what the parameter node connectors will list.
    assert ui_combo_items(UI_FILE, "placementComboBox") == [m.label() for m in slicer_module.Placement]
    assert ui_combo_items(UI_FILE, "profileComboBox") == [m.label() for m in slicer_module.StrutProfile]
    assert ui_combo_items(UI_FILE, "screwTypeComboBox") == slicer_module.SCREW_TYPES


def test_plan_and_export_settings_name_the_problem(slicer_module):
    """Missing points, bad variant text and an empty export selection are refused with problem + fix."""
    import slicer
    import vtk

    from PatientImplantPlannerLib.errors import PlanError, PlannerError

    logic = slicer_module.PatientImplantPlannerLogic()
    p = logic.getParameterNode()
    with pytest.raises(PlanError, match="No proximal vertebra point") as e:
        logic.planFromParameters(p)
    assert "Place a point" in e.value.fix
    for name, z in (("proximalPoint", 30.0), ("distalPoint", -30.0)):
        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
        node.AddControlPoint(vtk.vtkVector3d(1.0, 2.0, z))
        setattr(p, name, node)
    p.variantsMm = "2, three"
    with pytest.raises(PlanError, match="not numbers"):
        logic.planFromParameters(p)
    p.variantsMm = "2, 40"
    with pytest.raises(PlanError, match="40"):
        logic.planFromParameters(p)
    p.variantsMm = ""
    plan = logic.planFromParameters(p)
    assert plan.variants_mm == [] and plan.proximal_point_ras == [1.0, 2.0, 30.0]
    p.exportStl = False
    with pytest.raises(PlannerError, match="No file format"):
        logic.bundleParameters(p)
    p.exportStl, p.export3mf = True, True
    for field in slicer_module.EXPORT_PART_FIELDS.values():
        setattr(p, field, False)
    with pytest.raises(PlannerError, match="No part"):
        logic.bundleParameters(p)
    p.exportDrillGuides = True
    export, _lattice, _guides = logic.bundleParameters(p)
    assert export.parts == ("drill_guides",) and export.formats == ("stl", "3mf")


def test_design_self_test_can_fail(slicer_module, monkeypatch):
    """A logic whose design loses a variant model makes the design self-test fail."""
    pytest.importorskip(f"{ENGINE}.workflow")
    logic_cls = slicer_module.PatientImplantPlannerLogic
    real = logic_cls.designImplant

    def without_a_variant(self, *args, **kwargs):
        result, nodes = real(self, *args, **kwargs)
        nodes.models.pop("+4 mm")
        return result, nodes

    monkeypatch.setattr(logic_cls, "designImplant", without_a_variant)
    case = slicer_module.PatientImplantPlannerTest()
    case.setUp()
    with pytest.raises(AssertionError):
        case.test_DesignImplantPhantom()


def test_export_self_test_can_fail(slicer_module, monkeypatch):
    """An export that leaves a file out of its manifest makes the export self-test fail."""
    pytest.importorskip(f"{ENGINE}.workflow")
    logic_cls = slicer_module.PatientImplantPlannerLogic
    real = logic_cls.exportBundle

    def with_an_unlisted_file(self, *args, **kwargs):
        bundle = real(self, *args, **kwargs)
        with open(os.path.join(bundle.folder, "unlisted.stl"), "wb") as f:
            f.write(b"solid")
        return bundle

    monkeypatch.setattr(logic_cls, "exportBundle", with_an_unlisted_file)
    case = slicer_module.PatientImplantPlannerTest()
    case.setUp()
    with pytest.raises(AssertionError):
        case.test_ExportBundlePhantom()


def test_widget_designs_follows_edits_and_exports(slicer_module, monkeypatch, tmp_path):
    """The widget's handlers on a phantom, with a mock ui and the update timer fired by hand: design, a dragged
    endplate and a moved screw regenerate (the screw stays where the user put it), a bad variant text fails once
    without a dialog and without retry loops, a good one applies, export writes the bundle, and after the plan is
    cleared edits no longer trigger updates."""
    from unittest import mock

    import numpy as np
    import slicer
    import vtk

    from PatientImplantPlannerLib.phantom import make_spine_phantom

    dialogs = []
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, **kwargs: dialogs.append(text))
    monkeypatch.setattr(slicer, "qSlicerMarkupsPlaceWidget", types.SimpleNamespace(ForcePlaceSingleMarkup=1),
                        raising=False)
    w = slicer_module.PatientImplantPlannerWidget()
    w.ui = mock.MagicMock()
    w.logic = slicer_module.PatientImplantPlannerLogic()
    for setup in (w._setupLevelsPanel, w._setupImplantPanel, w._setupScrewsPanel, w._setupVariantsPanel,
                  w._setupExportBundlePanel, w._setupStatusArea):
        setup()
    timer = w._regenerateTimer
    assert timer.interval == slicer_module.AUTO_UPDATE_DELAY_MS

    phantom = make_spine_phantom(spacing=1.0, levels=("L1", "L2", "L3"))
    ct = phantom.add_to_scene(w.logic.context(), "PhantomCT")
    seeds = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "BoneSeeds")
    for level in ("L1", "L2", "L3"):
        seeds.AddControlPoint(vtk.vtkVector3d(*phantom.body_point(level)))
    bone = w.logic.segmentBone(ct, w.logic.boneSegmentationParameters(seedNode=seeds))
    p = w._parameterNode = w.logic.getParameterNode()
    p.inputVolume, p.boneSegmentation, p.boneSegmentId = ct, bone.segmentation_node, bone.segment_id
    for name, level in (("proximal", "L1"), ("distal", "L3")):
        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
        node.AddControlPoint(vtk.vtkVector3d(*phantom.body_point(level)))
        setattr(p, f"{name}Point", node)
    p.caseId, p.placement = "WIDGET-1", slicer_module.Placement.anterior
    p.implantProfile, p.widthMm, p.depthMm = slicer_module.StrutProfile.curved_plate, 10.0, 5.0
    p.bundleFolder = tmp_path / "exports"
    w._onParameterNodeModified()
    assert w.ui.designImplantButton.enabled is True

    w.onDesignImplantButton()
    assert dialogs == [] and w._planResult is not None, w.ui.statusLabel.text
    assert w.ui.statusLabel.text.startswith("Implant designed.")
    nominal = w._planResult.nominal.length_mm
    assert not timer.active

    # Drag the distal endplate 1.5 mm: the observer schedules an update, firing it lengthens the implant.
    # (The test holds no PlanNodes of its own: headless, a removed model that Python still references keeps its
    # subject hierarchy item, and the engine would then find it.)
    plane = w._planNodes.distal_endplate
    centre = np.zeros(3)
    plane.GetCenterWorld(centre)
    plane.SetCenterWorld(*(centre - 1.5 * w._planResult.distal_endplate.normal))
    assert timer.active and not w._screwsEdited
    timer.fire()
    assert w._planResult.nominal.length_mm - nominal == pytest.approx(1.5, abs=0.1)
    assert w.ui.statusLabel.text.startswith("Implant updated.")

    # Move a screw's entry: it is kept on the redesign.
    line = w._planNodes.screws[0]
    entry = np.zeros(3)
    line.GetNthControlPointPositionWorld(0, entry)
    moved = entry + np.array([0.0, 0.0, 0.5])
    line.SetNthControlPointPositionWorld(0, *moved)
    assert timer.active and w._screwsEdited
    timer.fire()
    assert dialogs == [], w.ui.statusLabel.text
    after = np.zeros(3)
    w._planNodes.screws[0].GetNthControlPointPositionWorld(0, after)
    np.testing.assert_allclose(after, moved, atol=1e-6)

    # A bad variant text: one quiet failure (status + warnings, no dialog), no automatic retry.
    p.variantsMm = "2, x"
    w._onParameterNodeModified()
    assert timer.active
    timer.fire()
    assert dialogs == [] and "not numbers" in w.ui.statusLabel.text
    assert "not numbers" in w.ui.planWarningsLabel.text
    w._onParameterNodeModified()
    assert not timer.active
    p.variantsMm = "3"
    w._onParameterNodeModified()
    timer.fire()
    assert set(w._planNodes.models) == {"nominal", "+3 mm"}

    # While a handle is dragged nothing is scheduled; the drop schedules one update.
    markups = slicer.vtkMRMLMarkupsNode
    axis = w._planNodes.axis
    axis.InvokeCustomModifiedEvent(markups.PointStartInteractionEvent)
    point = np.zeros(3)
    axis.GetNthControlPointPositionWorld(1, point)
    axis.SetNthControlPointPositionWorld(1, *(point + np.array([0.0, 0.3, 0.0])))
    assert not timer.active
    axis.InvokeCustomModifiedEvent(markups.PointEndInteractionEvent)
    assert timer.active

    # Export with that update still pending: it is applied first, with a setting changed meanwhile.
    p.variantsMm = "3, 4"
    for field in ("exportLattice", "exportReport", "exportCheckModel", "exportBoneModel", "exportDockingGuides"):
        setattr(p, field, False)
    w.onExportBundleButton()
    assert dialogs == [] and w._lastBundle is not None, w.ui.statusLabel.text
    assert not timer.active
    written = sorted(os.listdir(w._lastBundle.folder))
    assert {"WIDGET-1_implant_plus3mm_Ti6Al4V.stl", "WIDGET-1_implant_plus4mm_Ti6Al4V.stl", "manifest.json"} <= set(
        written)
    assert w.ui.openReportButton.enabled is True

    # A new scene: no plan, no observers.
    w._clearPlan()
    line.SetNthControlPointPositionWorld(0, *entry)
    assert not timer.active and w._planResult is None


def test_labels_self_test_can_fail(slicer_module, monkeypatch):
    """A logic that mixes up the vertebra names of the segmentation (L1 <-> L3) makes the labels self-test fail."""
    pytest.importorskip(f"{ENGINE}.levelsource")
    logic_cls = slicer_module.PatientImplantPlannerLogic
    real = logic_cls.levelLabels

    def swapped(self, *args, **kwargs):
        label_map, values = real(self, *args, **kwargs)
        return label_map, {**values, "L1": values["L3"], "L3": values["L1"]}

    monkeypatch.setattr(logic_cls, "levelLabels", swapped)
    case = slicer_module.PatientImplantPlannerTest()
    case.setUp()
    with pytest.raises(AssertionError):
        case.test_DesignFromVertebraLabels()


def test_widget_designs_from_vertebra_labels_without_points(slicer_module, monkeypatch):
    """With a vertebra segmentation as the level source and no points: the design button is enabled, empty level
    names are refused in the error dialog (problem + fix), named levels design the implant, and a dragged endplate
    regenerates with the same labels; without the segmentation the points are required again."""
    from unittest import mock

    import numpy as np
    import slicer

    from PatientImplantPlannerLib.phantom import make_spine_phantom
    from PatientImplantPlannerLib.segments import set_segment_mask

    dialogs = []
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, **kwargs: dialogs.append(text))
    monkeypatch.setattr(slicer, "qSlicerMarkupsPlaceWidget", types.SimpleNamespace(ForcePlaceSingleMarkup=1),
                        raising=False)
    w = slicer_module.PatientImplantPlannerWidget()
    w.ui = mock.MagicMock()
    w.logic = slicer_module.PatientImplantPlannerLogic()
    for setup in (w._setupLevelsPanel, w._setupImplantPanel, w._setupScrewsPanel, w._setupVariantsPanel,
                  w._setupExportBundlePanel, w._setupStatusArea):
        setup()
    labelsUsed = []
    realRegenerate = w.logic.regenerate

    def regenerate(*args, **kwargs):
        labelsUsed.append(kwargs.get("levelLabels"))
        return realRegenerate(*args, **kwargs)

    w.logic.regenerate = regenerate

    phantom = make_spine_phantom(spacing=1.0, levels=("L1", "L2", "L3"))
    ct = phantom.add_to_scene(w.logic.context(), "PhantomCT")
    bone = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Bone")
    boneId = bone.GetSegmentation().AddEmptySegment("bone", "bone")
    set_segment_mask(bone, boneId, phantom.bone_mask, ct)
    p = w._parameterNode = w.logic.getParameterNode()
    p.inputVolume, p.boneSegmentation, p.boneSegmentId = ct, bone, boneId
    p.levelSegmentation = slicer_module.PatientImplantPlannerTest.vertebraLabelSegmentation(phantom, ct)
    p.caseId = "WIDGET-LABELS"
    w._onParameterNodeModified()
    assert w.ui.designImplantButton.enabled is True  # no points placed

    w.onDesignImplantButton()
    assert len(dialogs) == 1 and w._planResult is None
    assert "level name is empty (proximal, distal)" in dialogs[0] and "'vertebrae_L1'" in dialogs[0]
    assert w.ui.statusLabel.text.startswith("Implant design failed.")

    p.proximalLevel, p.distalLevel = "L1", "L3"
    w.onDesignImplantButton()
    assert len(dialogs) == 1 and w._planResult is not None, w.ui.statusLabel.text
    labels = w._planLevelSource[1]
    assert set(labels[1]) == {"L1", "L2", "L3"}
    nominal = w._planResult.nominal.length_mm
    distalTruth = phantom.vertebra("L3").superior_endplate
    assert np.linalg.norm(w._planResult.distal_endplate.centre - distalTruth.centre) < 1.5

    # Another vertebra segmentation selected meanwhile does not change the shown plan's level source.
    p.levelSegmentation = None
    plane = w._planNodes.distal_endplate
    centre = np.zeros(3)
    plane.GetCenterWorld(centre)
    plane.SetCenterWorld(*(centre - 1.5 * w._planResult.distal_endplate.normal))
    w._regenerateTimer.fire()
    assert len(dialogs) == 1, w.ui.statusLabel.text
    assert labelsUsed and labelsUsed[-1] is labels
    assert w._planResult.nominal.length_mm - nominal == pytest.approx(1.5, abs=0.1)

    w._onParameterNodeModified()
    assert w.ui.designImplantButton.enabled is False  # no labels: the points are needed again
