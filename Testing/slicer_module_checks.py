"""Static checks of the Slicer module's files, which cannot run here (no Slicer application, no Qt).

They read the real files: the .ui, the module .py (with ``ast``), both CMakeLists, the Extensions Index JSON and the
icon. Each check is a plain function that returns a list of problems, so the guard tests (test_slicer_module_static.py,
test_extension_index.py) also run it on a deliberately broken copy (``broken_copy``) to prove it can fail.
"""

import ast
import json
import os
import re
import shutil
import sys
import types
import xml.etree.ElementTree as ET

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
LICENSE = os.path.join(ROOT, "LICENSE")
README = os.path.join(ROOT, "README.md")
SCREENSHOT = os.path.join(ROOT, "docs", "screenshot.png")

# Folders under the module directory that are build or packaging by-products, not module files.
IGNORED_DIRS = {"__pycache__"}
IGNORED_DIR_SUFFIXES = (".egg-info",)

# Python modules that Slicer's Python provides (bundled) and that the module may import at top level.
SLICER_TOP_LEVEL = {"slicer", "qt", "ctk", "vtk"}
# ... and inside functions (imported when used: SampleData is a module loaded after startup, numpy is bundled,
# the engine may pull in manifold3d which is installed on first use).
SLICER_IN_FUNCTIONS = SLICER_TOP_LEVEL | {"SampleData", "numpy", "scipy", "SimpleITK", ENGINE}
# The engine module that is safe at top level: it has no third-party imports.
# Light engine modules (standard library only) the module may import at load time.
ENGINE_TOP_LEVEL = {f"{ENGINE}.core.errors", f"{ENGINE}.scene.planeditor"}
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
# The Extensions Index catalog entry schema v1.0.1, the one our JSON names (Slicer/Slicer,
# Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json): its properties with their type or allowed values.
# additionalProperties is false there, so any other key fails the index's check_json_schema.
CATALOG_SCHEMA = {"$schema": str, "category": str, "scm_url": str, "scm_revision": str, "scm_type": ("git", "local"),
                  "build_dependencies": list, "build_subdirectory": str, "enabled": bool, "tier": (1, 3, 5)}
CATALOG_KEYS = set(CATALOG_SCHEMA)
CATALOG_REQUIRED = {"$schema", "category", "scm_url"}

WIDGET_METHODS = ("setup", "cleanup", "enter", "exit", "onSceneStartClose", "onSceneEndClose",
                  "initializeParameterNode", "setParameterNode")


def read_text(path):
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
    return ast.parse(read_text(py_path), filename=py_path)


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
    source = read_text(py_path)
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
    source = read_text(py_path)
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
    path = os.path.join(ENGINE_DIR, *module.split("."))
    names = set()
    if os.path.isdir(path):  # a sub-package: its modules and what its __init__ defines
        names.update(f[:-3] for f in os.listdir(path) if f.endswith(".py"))
        path = os.path.join(path, "__init__")
    path += ".py"
    if not os.path.isfile(path):
        return None
    tree = _tree(path)
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
    source = read_text(py_path)
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
    for m in re.finditer(r"resourcePath\(\s*[\"']([^\"']+)[\"']", read_text(py_path)):
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
ENGINE_APP_BRIDGE = (os.path.join("scene", "context.py"), "context_from_slicer")


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


# ---------------------------------------------------------------------------------------- a copy to break


def broken_copy(tmp_path):
    """A copy of the module folder, both CMakeLists, the JSON, LICENSE, README and its screenshot; returns paths to
    edit."""
    module_dir = tmp_path / MODULE_NAME
    shutil.copytree(MODULE_DIR, module_dir, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(TOP_CMAKE, tmp_path / "CMakeLists.txt")
    shutil.copy(EXTENSION_JSON, tmp_path / os.path.basename(EXTENSION_JSON))
    shutil.copy(LICENSE, tmp_path / "LICENSE")
    shutil.copy(README, tmp_path / "README.md")
    os.makedirs(tmp_path / "docs")
    shutil.copy(SCREENSHOT, tmp_path / "docs" / os.path.basename(SCREENSHOT))
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
        license=str(tmp_path / "LICENSE"),
        readme=str(tmp_path / "README.md"),
    )


def edit(path, old, new, count=1):
    text = read_text(path)
    assert old in text, f"test setup: {old!r} not in {path}"
    with open(path, "w", encoding="utf-8") as f:
        f.write(text.replace(old, new, count))
