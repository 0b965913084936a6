"""Stand-ins for the GUI-only packages the Slicer module imports (qt, ctk, ScriptedLoadableModule,
parameterNodeWrapper, SampleData: the real ones need the Slicer application), so that the module file and its helper
package can be imported and its logic, widget handlers and self-test run on the headless Slicer core
(test_slicer_module_widget.py).
"""

import hashlib
import importlib.util
import os
import sys
import types
import unittest

from slicer_module_checks import MODULE_DIR, MODULE_PACKAGE, MODULE_PY


def stand_in_modules(tmp_path, ctx):
    """Minimal stand-ins for the GUI-only packages the module imports (the real ones need the Slicer app)."""
    from PatientImplantPlannerLib.scene.ctload import load_ct

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


def import_module_under_test(ctx, tmp_path, monkeypatch):
    """The module file imported against the headless core with the stand-ins; the engine context is ``ctx``.

    Its helper package is imported from the module folder, as Slicer does (it puts that folder on sys.path), and
    afresh for each test: modules imported for an earlier test hold that test's stand-ins."""
    import slicer

    import PatientImplantPlannerLib.scene.context as context

    stand_ins, app = stand_in_modules(tmp_path, ctx)
    for name, mod in stand_ins.items():
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.setattr(slicer, "app", app, raising=False)
    monkeypatch.setattr(context, "context_from_slicer", lambda: ctx)
    monkeypatch.syspath_prepend(MODULE_DIR)
    for name in [n for n in sys.modules if n == MODULE_PACKAGE or n.startswith(MODULE_PACKAGE + ".")]:
        monkeypatch.delitem(sys.modules, name)
    spec = importlib.util.spec_from_file_location("PatientImplantPlannerUnderTest", MODULE_PY)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def widget_under_test(slicer_module, monkeypatch):
    """The module's widget with a mock ui and the panels that do not build Qt widgets set up, as after setup();
    returns (widget, error dialogs shown)."""
    from unittest import mock

    import slicer

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
    return w, dialogs
