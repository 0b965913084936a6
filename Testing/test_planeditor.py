"""The Qt-free plan editor behind the Slicer widget: when an edit leads to a redesign."""

from types import SimpleNamespace

import pytest

from PatientImplantPlannerLib.scene.planeditor import IGNORED, NEEDS_UPDATE, SCHEDULED, EditedPlan, PlanEditor


class Countdown:
    def __init__(self):
        self.active, self.starts = False, 0

    def start(self):
        self.active, self.starts = True, self.starts + 1

    def stop(self):
        self.active = False

    def isActive(self):
        return self.active


class Markups:
    """Positions of a plan's markups, as the widget reads them from the scene."""

    def __init__(self):
        self.axis, self.screws = [(0.0, 0.0, 0.0), (0.0, 0.0, 50.0)], [(1.0, 2.0, 3.0)]


def geometry(nodes: Markups) -> dict:
    return {"axis": list(nodes.axis), "screws": list(nodes.screws)}


def designed(case_id="CASE", per_end=2, ct="ct"):
    result = SimpleNamespace(plan=SimpleNamespace(case_id=case_id, screws=SimpleNamespace(per_end=per_end)))
    return EditedPlan(result, Markups(), (ct, "bone", "segment"), level_labels="labels")


@pytest.fixture
def editor():
    e = PlanEditor(Countdown(), geometry)
    e.set_plan(designed(), settings=("s", 1), screws_edited=False)
    return e


def test_moving_a_point_schedules_one_redesign_and_marks_hand_placed_screws(editor):
    assert editor.markups_modified(("s", 1), auto_update=True, busy=False) == IGNORED  # selection: nothing moved
    editor.nodes.axis[1] = (0.0, 0.0, 52.0)
    assert editor.markups_modified(("s", 1), auto_update=True, busy=False) == SCHEDULED
    assert editor.timer.active and not editor.screws_edited
    editor.nodes.screws[0] = (1.0, 2.0, 5.0)
    assert editor.markups_modified(("s", 1), auto_update=True, busy=False) == SCHEDULED
    assert editor.screws_edited and editor.timer.starts == 2  # restarted: still one redesign at the end
    assert not editor.screws_should_reset("CASE", screws_per_end=2)
    assert editor.screws_should_reset("CASE", screws_per_end=3)  # a new count needs a new layout
    assert not editor.screws_should_reset("OTHER", screws_per_end=3)  # a plan loaded with the scene keeps its own


def test_no_redesign_during_a_drag_or_an_engine_call(editor):
    editor.interaction_started()
    editor.nodes.axis[1] = (0.0, 0.0, 55.0)
    assert editor.markups_modified(("s", 1), auto_update=True, busy=False) == IGNORED
    assert editor.interaction_ended(("s", 1), auto_update=True, busy=False) == SCHEDULED
    editor.interaction_started()
    assert editor.countdown_ended(busy=False) is False and editor.timer.starts == 2  # waits for the drag's end
    editor.interacting = False
    assert editor.countdown_ended(busy=True) is False and editor.timer.starts == 3
    assert editor.countdown_ended(busy=False) is True


def test_a_failed_update_is_not_retried_until_something_changes(editor):
    editor.nodes.axis[1] = (0.0, 0.0, 60.0)
    editor.update_failed(editor.attempt(("s", 1)))
    assert editor.markups_modified(("s", 1), auto_update=True, busy=False) == IGNORED
    assert not editor.settings_changed(("s", 1), auto_update=True, busy=False)
    assert editor.settings_changed(("s", 2), auto_update=True, busy=False)  # a new setting: try again
    editor.timer.stop()
    editor.nodes.axis[1] = (0.0, 0.0, 61.0)
    assert editor.markups_modified(("s", 1), auto_update=True, busy=False) == SCHEDULED


def test_settings_and_manual_mode(editor):
    assert not editor.settings_changed(("s", 1), auto_update=True, busy=False)  # the designed settings
    assert not editor.settings_changed(("s", 2), auto_update=False, busy=False)
    assert not editor.settings_changed(("s", 2), auto_update=True, busy=True)
    assert not editor.timer.active
    editor.nodes.axis[0] = (1.0, 0.0, 0.0)
    assert editor.markups_modified(("s", 1), auto_update=False, busy=False) == NEEDS_UPDATE
    assert not editor.timer.active
    assert editor.settings_changed(("s", 2), auto_update=True, busy=False) and editor.take_pending()
    assert not editor.timer.active and not editor.take_pending()


def test_level_labels_follow_the_shown_plan_only_for_its_case_and_ct(editor):
    selection = lambda: "selected"  # noqa: E731
    assert editor.level_labels_for("CASE", "ct", selection) == "labels"
    assert editor.level_labels_for("CASE", "other ct", selection) == "selected"
    assert editor.level_labels_for("OTHER", "ct", selection) == "selected"


def test_clear_forgets_the_plan_and_stops_the_countdown(editor):
    editor.nodes.axis[1] = (0.0, 0.0, 70.0)
    editor.markups_modified(("s", 1), auto_update=True, busy=False)
    editor.clear()
    assert editor.result is None and editor.nodes is None and not editor.timer.active
    assert editor.countdown_ended(busy=False) is False
    assert editor.markups_modified(("s", 1), auto_update=True, busy=False) == IGNORED
