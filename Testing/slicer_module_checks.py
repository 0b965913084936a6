"""Static checks of the Slicer module's files, which cannot run here (no Slicer application, no Qt).

They read the real files: the module's Python files (with ``ast``: the module file Slicer loads and every file of its
helper package, ``MODULE_FILES``) against the .ui, the engine and the icon. The .ui on its own is read and checked in
ui_checks.py, the packaging (CMakeLists, Extensions Index JSON) in extension_checks.py. Each check is a plain
function that returns a list of problems, so the guard tests (test_slicer_module_static.py, test_extension_index.py)
also run it on a deliberately broken copy (``broken_copy``) to prove it can fail.
"""
import ast
import os
import re
import shutil
import sys
import types

from ui_checks import ui_parameter_bindings, ui_widget_property, ui_widgets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULE_NAME = "PatientImplantPlanner"
MODULE_DIR = os.path.join(ROOT, MODULE_NAME)
MODULE_PY = os.path.join(MODULE_DIR, f"{MODULE_NAME}.py")
# The module file's helper package (its widget, logic, self-test, ... split by job), next to it.
MODULE_PACKAGE = f"{MODULE_NAME}Module"
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


def module_files(module_dir=MODULE_DIR):
    """The module's Python files: the module file Slicer loads, then every file of its helper package (sorted)."""
    files = []
    for dirpath, dirnames, names in os.walk(os.path.join(module_dir, MODULE_PACKAGE)):
        dirnames[:] = [d for d in dirnames if d not in IGNORED_DIRS]
        files += [os.path.join(dirpath, f) for f in names if f.endswith(".py")]
    return [os.path.join(module_dir, f"{MODULE_NAME}.py")] + sorted(files)


# What the module guards scan: a check given only the module file would miss the code that moved into the package.
MODULE_FILES = module_files()

# Python modules that Slicer's Python provides (bundled) and that the module may import at top level.
SLICER_TOP_LEVEL = {"slicer", "qt", "ctk", "vtk"}
# ... and inside functions (imported when used: SampleData is a module loaded after startup, numpy is bundled,
# the engine may pull in manifold3d which is installed on first use).
SLICER_IN_FUNCTIONS = SLICER_TOP_LEVEL | {"SampleData", "numpy", "scipy", "SimpleITK", ENGINE}
# The engine module that is safe at top level: it has no third-party imports.
# Light engine modules (standard library only) the module may import at load time.
ENGINE_TOP_LEVEL = {f"{ENGINE}.core.errors", f"{ENGINE}.scene.planeditor"}
# Installed on first use by ensureDependencies() only (import names).
FIRST_USE_PACKAGES = {"manifold3d"}

WIDGET_METHODS = ("setup", "cleanup", "enter", "exit", "onSceneStartClose", "onSceneEndClose",
                  "initializeParameterNode", "setParameterNode")


def read_text(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def _stdlib():
    return set(sys.stdlib_module_names)


# ---------------------------------------------------------------------------------------------------- module .py


def _tree(py_path):
    return ast.parse(read_text(py_path), filename=py_path)


def _files(py_files):
    """The files a check scans: ``MODULE_FILES`` (or a broken copy's), or one path."""
    return [py_files] if isinstance(py_files, (str, os.PathLike)) else list(py_files)


def _short(py_path):
    """How problems name a module file: 'PatientImplantPlanner.py', 'PatientImplantPlannerModule/widget.py'."""
    parent = os.path.basename(os.path.dirname(py_path))
    name = os.path.basename(py_path)
    return f"{parent}/{name}" if parent == MODULE_PACKAGE else name


def _module_dir_of(py_path):
    """The module folder a module file belongs to (the module file's folder, the package's parent)."""
    folder = os.path.dirname(os.path.abspath(py_path))
    return os.path.dirname(folder) if os.path.basename(folder) == MODULE_PACKAGE else folder


def _self_ui_names_in(py_path):
    return {
        node.attr
        for node in ast.walk(_tree(py_path))
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Attribute)
        and node.value.attr == "ui"
        and isinstance(node.value.value, ast.Name)
        and node.value.value.id == "self"
    }


def self_ui_names(py_files):
    """Names used as ``self.ui.<name>`` in the module's files."""
    return set().union(*(_self_ui_names_in(f) for f in _files(py_files)))


def parameter_node_class(py_files):
    """The class decorated with @parameterNodeWrapper (in whichever module file defines it)."""
    for py_path in _files(py_files):
        for node in _tree(py_path).body:
            if isinstance(node, ast.ClassDef):
                for d in node.decorator_list:
                    if (isinstance(d, ast.Name) and d.id == "parameterNodeWrapper") or (
                            isinstance(d, ast.Attribute) and d.attr == "parameterNodeWrapper"):
                        return node
    return None


def parameter_fields(py_files):
    """{field name: (annotation node, default node or None)} of the parameter node wrapper class."""
    cls = parameter_node_class(py_files)
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


def module_enums(py_files):
    """Names of the enum.Enum subclasses defined at the top level of the module's files."""
    return {
        node.name
        for py_path in _files(py_files)
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


def check_ui_names_used_by_widget(py_files, ui_path):
    widgets = set(ui_widgets(ui_path))
    return [f"self.ui.{n} is used in {_short(py_path)} but there is no such widget in the .ui"
            for py_path in _files(py_files) for n in sorted(_self_ui_names_in(py_path) - widgets)]


def check_parameter_bindings(py_files, ui_path):
    """Every SlicerParameterName maps to a field whose type the widget can show; every field is used somewhere."""
    fields = parameter_fields(py_files)
    if not fields:
        return ["no @parameterNodeWrapper class with annotated fields in the module"]
    bindings, problems = ui_parameter_bindings(ui_path)
    enums = module_enums(py_files)
    for pname, (wname, wclass) in sorted(bindings.items()):
        if pname not in fields:
            problems.append(f"{wname} has SlicerParameterName {pname!r}, which is not a parameter node field")
            continue
        reason = connector_problem(wclass, fields[pname][0], enums)
        if reason:
            problems.append(f"{wname} -> {pname}: {reason}")
    source = "\n".join(read_text(f) for f in _files(py_files))
    for name in sorted(set(fields) - set(bindings)):
        # Fields without a widget must at least be read or written by the code.
        if len(re.findall(rf"\.{name}\b", source)) == 0:
            problems.append(f"parameter field {name!r} is neither bound in the .ui nor used in the code")
    return problems


# Qt's default (minimum, maximum) of spin boxes, for range properties the .ui leaves unset.
SPIN_BOX_DEFAULT_RANGE = {"QDoubleSpinBox": (0.0, 99.99), "ctkDoubleSpinBox": (0.0, 99.99), "QSpinBox": (0, 99)}


def check_ui_defaults_match_fields(py_files, ui_path):
    """The .ui shows the same defaults as the parameter node (Designer previews and a fresh scene agree)."""
    fields = parameter_fields(py_files)
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


def check_module_imports(py_files):
    """The module imports only what Slicer provides, each at a place where it is sure to be importable; its helper
    package (absolute or relative imports) anywhere, but never the module file itself (a cycle: Slicer loads that
    file, which imports the package)."""
    problems = []
    for py_path in _files(py_files):
        problems += _module_imports_problems(py_path)
    return problems


def _module_imports_problems(py_path):
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
        where = f"{_short(py_path)} line {line} ({'top level' if top else func + '()'})"
        if root in stdlib:
            continue
        if root == MODULE_NAME:
            problems.append(f"{module} imported at {where}: the module file imports the package, not the reverse")
            continue
        if root == MODULE_PACKAGE or module.startswith("."):
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


def _engine_defines(module, package_dir=ENGINE_DIR):
    """Names a module of the engine (or of ``package_dir``) defines; None if there is no such module."""
    path = os.path.join(package_dir, *module.split("."))
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


def check_engine_names_exist(py_files):
    """Every engine name the module's files import or use (``from Lib.x import y``, ``Lib.x.y``) is defined there;
    so is every name they import from the module's helper package (``from PatientImplantPlannerModule.x import y``).
    Each problem ends with the file that has it."""
    problems = []
    for py_path in _files(py_files):
        module_dir = _module_dir_of(py_path)
        packages = {ENGINE: os.path.join(module_dir, ENGINE), MODULE_PACKAGE: os.path.join(module_dir, MODULE_PACKAGE)}
        problems += [f"{p} (in {_short(py_path)})" for p in _package_names_problems(_tree(py_path), packages)]
    return sorted(set(problems))


def _package_names_problems(tree, packages):
    problems = []
    module_aliases = {}  # local name -> (package, module)
    for node in ast.walk(tree):
        root = node.module.split(".")[0] if isinstance(node, ast.ImportFrom) and node.module else None
        if root in packages and not node.level:
            sub = node.module[len(root) + 1:]
            for alias in node.names:
                if not sub:  # from Lib import module
                    if _engine_defines(alias.name, packages[root]) is None:
                        problems.append(f"{root}.{alias.name} does not exist")
                    module_aliases[alias.asname or alias.name] = (root, alias.name)
                    continue
                defined = _engine_defines(sub, packages[root])
                if defined is None:
                    problems.append(f"{node.module} does not exist")
                elif alias.name not in defined:
                    problems.append(f"{node.module} has no {alias.name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in module_aliases:
            root, module = module_aliases[node.value.id]
            if node.attr not in (_engine_defines(module, packages[root]) or set()):
                problems.append(f"{root}.{module} has no {node.attr}")
    return problems


def check_slicer_util_names(py_files):
    """``slicer.util.X`` names exist (slicer-core ships the same slicer/util.py as the application)."""
    problems = []
    for py_path in _files(py_files):
        problems += [f"{p[:-1]}, {_short(py_path)})" for p in _slicer_util_problems(py_path)]
    return problems


def _slicer_util_problems(py_path):
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


def _top_level(py_files):
    """({class name: (ClassDef, path)}, {function name: FunctionDef}) defined at the top level of the module's files."""
    classes, functions = {}, {}
    for py_path in _files(py_files):
        for node in _tree(py_path).body:
            if isinstance(node, ast.ClassDef):
                classes.setdefault(node.name, (node, py_path))
            elif isinstance(node, ast.FunctionDef):
                functions.setdefault(node.name, node)
    return classes, functions


def _names_bound(tree):
    """Names the module's top level defines or imports."""
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def check_module_structure(py_files):
    """The scripted-module template's classes, methods and settings are there. The module class is defined in the
    module file, which also names (defines or imports) the classes Slicer looks up there; the others may be in the
    helper package, the widget's panels as mixins defined in the module's files."""
    py_files = _files(py_files)
    entry = next((f for f in py_files if os.path.basename(f) == f"{MODULE_NAME}.py"), None)
    if entry is None:
        return [f"{MODULE_NAME}.py is not among the files checked"]
    classes, functions = _top_level(py_files)
    source = "\n".join(read_text(f) for f in py_files)
    problems = []
    expected = {
        MODULE_NAME: ["ScriptedLoadableModule"],
        f"{MODULE_NAME}Widget": ["ScriptedLoadableModuleWidget", "VTKObservationMixin"],
        f"{MODULE_NAME}Logic": ["ScriptedLoadableModuleLogic"],
        f"{MODULE_NAME}Test": ["ScriptedLoadableModuleTest"],
    }
    visible = _names_bound(_tree(entry))
    for name, bases in expected.items():
        if name not in visible:
            problems.append(f"{name} is neither defined nor imported in {MODULE_NAME}.py (Slicer looks for it there)")
        if name not in classes:
            problems.append(f"class {name} is missing")
            continue
        found = [ast.unparse(b) for b in classes[name][0].bases]
        if found[:len(bases)] != bases:
            problems.append(f"class {name} derives from {found}, expected {bases}")
        problems += [f"class {name} derives from {extra}, which is not a class of the module's files"
                     for extra in found[len(bases):] if extra not in classes]
    if MODULE_NAME in classes and classes[MODULE_NAME][1] != entry:
        problems.append(f"class {MODULE_NAME} is not defined in {MODULE_NAME}.py (its runTest looks up the test there)")
    parameter_node = parameter_node_class(py_files)
    if parameter_node is not None and parameter_node.name not in visible:
        problems.append(f"{parameter_node.name} is neither defined nor imported in {MODULE_NAME}.py")
    widget = classes.get(f"{MODULE_NAME}Widget", (None,))[0]
    if widget is not None:
        # The widget's own body and those of its mixins (its bases defined in the module's files).
        parts = [widget] + [classes[b][0] for b in map(ast.unparse, widget.bases) if b in classes]
        methods = {n.name for part in parts for n in part.body if isinstance(n, ast.FunctionDef)}
        problems += [f"{MODULE_NAME}Widget.{m}() is missing" for m in WIDGET_METHODS if m not in methods]
        if not any("connectGui" in ast.unparse(part) for part in parts):
            problems.append("the widget does not bind the GUI with connectGui")
    test = classes.get(f"{MODULE_NAME}Test", (None,))[0]
    if test is not None:
        methods = {n.name for n in test.body if isinstance(n, ast.FunctionDef)}
        run = next((n for n in test.body if isinstance(n, ast.FunctionDef) and n.name == "runTest"), None)
        called = {n.func.attr for n in ast.walk(run) if isinstance(n, ast.Call)
                  and isinstance(n.func, ast.Attribute)} if run else set()
        tests = {m for m in methods if m.startswith("test_")}
        if not tests:
            problems.append("the self-test class has no test_ methods")
        problems += [f"runTest() does not call {m}()" for m in sorted(tests - called)]
    module = classes.get(MODULE_NAME, (None,))[0]
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


def check_resources_referenced_exist(py_files, module_dir):
    """Icons and .ui files named in the module's files exist under Resources/."""
    present = set()
    for _dirpath, _, files in os.walk(os.path.join(module_dir, "Resources")):
        present.update(files)
    problems = []
    for py_path in _files(py_files):
        for node in ast.walk(_tree(py_path)):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                text = node.value
                if re.fullmatch(r"[\w./-]+\.(png|ui)", text):
                    if os.path.basename(text) not in present and "Resources" not in text:
                        problems.append(f"{text!r} is referenced in {_short(py_path)} but no such file is under "
                                        "Resources/")
        # resourcePath("UI/x.ui") style
        for m in re.finditer(r"resourcePath\(\s*[\"']([^\"']+)[\"']", read_text(py_path)):
            if not os.path.isfile(os.path.join(module_dir, "Resources", m.group(1))):
                problems.append(f"resourcePath({m.group(1)!r}) in {_short(py_path)} does not exist")
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
    edit (the module file ``py``, its helper package's files ``helpers.<name>``) and ``files`` to check."""
    module_dir = tmp_path / MODULE_NAME
    shutil.copytree(MODULE_DIR, module_dir, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(TOP_CMAKE, tmp_path / "CMakeLists.txt")
    shutil.copy(EXTENSION_JSON, tmp_path / os.path.basename(EXTENSION_JSON))
    shutil.copy(LICENSE, tmp_path / "LICENSE")
    shutil.copy(README, tmp_path / "README.md")
    os.makedirs(tmp_path / "docs")
    shutil.copy(SCREENSHOT, tmp_path / "docs" / os.path.basename(SCREENSHOT))
    files = module_files(str(module_dir))
    return types.SimpleNamespace(
        root=tmp_path,
        module_dir=str(module_dir),
        py=str(module_dir / f"{MODULE_NAME}.py"),
        # Every module file (what the module guards scan), and the helper package's files by name: helpers.widget, ...
        files=files,
        helpers=types.SimpleNamespace(**{os.path.basename(f)[:-3]: f for f in files[1:]
                                     if not os.path.basename(f).startswith("__")}),
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
