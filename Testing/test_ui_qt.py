"""The module's .ui files loaded by Qt itself (PySide6's QUiLoader on the offscreen platform), with placeholder classes
for the CTK, qMRML and qSlicer widgets only Slicer provides: a file Qt would reject, a widget class Qt cannot create
or a scene connection Qt cannot make fails here instead of when the module opens in Slicer. (The static guards in
test_slicer_module_static.py check names and bindings; Qt checks what it parses.)
"""

import glob
import os
import xml.etree.ElementTree as ET

import pytest
from slicer_module_checks import MODULE_DIR, UI_FILE, read_text

UI_FILES = sorted(glob.glob(os.path.join(MODULE_DIR, "Resources", "UI", "*.ui")))

# Slicer-only widget classes with the Qt class each placeholder derives from (the real ctkCollapsibleButton is a
# QAbstractButton; a QWidget placeholder holds the children the .ui gives it just the same).
CTK_WIDGETS = {"ctkCollapsibleButton": "QWidget", "ctkDoubleSpinBox": "QWidget", "ctkPathLineEdit": "QWidget",
               "ctkRangeWidget": "QWidget", "ctkSliderWidget": "QWidget", "ctkCheckBox": "QCheckBox"}
# qMRML/qSlicer widgets also have Slicer's scene signal and slot, which the .ui connects.
MRML_WIDGETS = {"qMRMLWidget": "QWidget", "qSlicerWidget": "QWidget", "qMRMLNodeComboBox": "QWidget",
                "qMRMLTableView": "QTableView", "qSlicerMarkupsPlaceWidget": "QWidget",
                "qMRMLSegmentSelectorWidget": "QWidget", "qMRMLSubjectHierarchyTreeView": "QTreeView"}
SCENE_TYPE = "vtkMRMLScene*"
# ctkPathLineEdit's flag properties (filters, options) are C++ enum sets the placeholder does not declare.
PLACEHOLDER_MESSAGES = {f"Designer: The set-type property {p} could not be read." for p in ("filters", "options")}


@pytest.fixture(scope="module")
def qt():
    """(loader, messages): a QUiLoader with the placeholders and the list Qt's messages go to while it loads."""
    os.environ["QT_QPA_PLATFORM"] = "offscreen"  # no display here; also what a CI machine has
    from PySide6 import QtWidgets
    from PySide6.QtCore import Signal, Slot, qInstallMessageHandler
    from PySide6.QtUiTools import QUiLoader

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    messages = []
    previous = qInstallMessageHandler(lambda kind, context, text: messages.append(text))

    def scene_api():
        @Slot(SCENE_TYPE)
        def setMRMLScene(self, scene):
            pass

        return {"mrmlSceneChanged": Signal(SCENE_TYPE), "setMRMLScene": setMRMLScene}

    # The loader does not keep the classes alive (a collected one crashes Qt when it creates the widget).
    placeholders = [type(name, (getattr(QtWidgets, base),), {}) for name, base in CTK_WIDGETS.items()]
    placeholders += [type(name, (getattr(QtWidgets, base),), scene_api()) for name, base in MRML_WIDGETS.items()]
    loader = QUiLoader()
    for cls in placeholders:
        loader.registerCustomWidget(cls)
    yield loader, messages
    qInstallMessageHandler(previous)
    del app, placeholders


def declared_widgets(ui_text):
    """{object name: class} of every widget the .ui declares."""
    return {w.get("name"): w.get("class") for w in ET.fromstring(ui_text).iter("widget")}


def qt_load_problems(qt, ui_text):
    """What Qt says when it loads ``ui_text``, plus every declared widget it did not create as that class."""
    from PySide6.QtCore import QBuffer, QByteArray, QIODevice
    from PySide6.QtWidgets import QWidget

    loader, messages = qt
    messages.clear()
    buffer = QBuffer()
    buffer.setData(QByteArray(ui_text.encode("utf-8")))
    buffer.open(QIODevice.ReadOnly)
    try:
        top = loader.load(buffer)
    except RuntimeError as e:  # PySide raises where C++ returns null; Qt's reason is in errorString()
        return [loader.errorString() or str(e)]
    problems = [m for m in messages if m not in PLACEHOLDER_MESSAGES]
    for name, cls in declared_widgets(ui_text).items():
        widget = top if top.objectName() == name else top.findChild(QWidget, name)
        created = widget.metaObject().className() if widget is not None else None
        if created != cls:
            problems.append(f"{name}: Qt created {created}, the .ui declares {cls}")
    top.deleteLater()
    return problems


@pytest.mark.parametrize("ui_path", UI_FILES, ids=os.path.basename)
def test_qt_loads_the_ui_file(qt, ui_path):
    text = read_text(ui_path)
    assert len(declared_widgets(text)) > 50  # the module's panels, not an empty file
    assert qt_load_problems(qt, text) == []


@pytest.mark.parametrize(
    "old, new, problem",
    [
        ("</ui>", "", "Premature end of document"),
        ('class="QLineEdit"', 'class="QLineEditt"', "unable to create a widget of the class 'QLineEditt'"),
        ("<slot>setMRMLScene(vtkMRMLScene*)</slot>", "<slot>setScene(vtkMRMLScene*)</slot>",
         "No such slot qMRMLNodeComboBox::setScene(vtkMRMLScene*)"),
        ('class="ctkRangeWidget"', 'class="ctkRangeSlider2"', "unable to create a widget of the class"),
        ('name="inputVolumeLabel"', 'name="inputVolumeSelector"', "No such slot QLabel::setMRMLScene"),
    ],
    ids=["truncated", "unknown Qt class", "unknown slot", "unknown Slicer class", "duplicate name"],
)
def test_qt_rejects_a_broken_ui_file(qt, old, new, problem):
    text = read_text(UI_FILE)
    assert old in text
    problems = qt_load_problems(qt, text.replace(old, new, 1))
    assert any(problem in p for p in problems), problems
