"""Readers and checks of the module's Qt Designer .ui file on its own (XML: widgets, SlicerParameterName bindings,
properties, MRML scene connections). How the module's code uses the .ui is checked in slicer_module_checks.py,
what Qt itself makes of it in test_ui_qt.py.
"""

import xml.etree.ElementTree as ET


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
