"""The plan being edited in the Slicer module, and when to redesign it after an edit.

The widget forwards its events here (a setting changed, a markups point moved, a drag started or ended, the
countdown ran out) and only does what the editor answers. The editor is Qt-free: its countdown is any object with
``start()``, ``stop()`` and ``isActive()`` (a ``qt.QTimer`` in Slicer, a stand-in in the tests), and the geometry of
the plan's markups is read through a function the caller passes, so the rules are tested headless.

Rules:
- one redesign per burst of edits: every edit restarts the countdown;
- nothing while a drag is in progress or an engine call runs: the countdown starts again;
- an edit that does not move anything (selecting or renaming a point) does not redesign;
- an update that failed is not retried until the settings or the markups change;
- screws placed by hand keep their place, unless the number of screws per end changes.
"""

from dataclasses import dataclass
from typing import Any, Callable, Optional

# What `markups_modified` did.
IGNORED = "ignored"  # nothing moved, or a drag / engine call is running
SCHEDULED = "scheduled"  # the countdown runs: the plan is redesigned when it ends
NEEDS_UPDATE = "needs_update"  # automatic update is off: the user should click "Update implant"


@dataclass
class EditedPlan:
    """A designed plan as shown: its result, scene nodes, the (CT, bone segmentation, segment ID) it was designed
    on, and the level labels it used (None when designed from clicked points)."""

    result: Any
    nodes: Any
    inputs: tuple
    level_labels: Any = None


class PlanEditor:
    def __init__(self, timer, markups_geometry: Callable[[Any], dict]):
        self.timer = timer
        self._geometry_of = markups_geometry
        self.plan: Optional[EditedPlan] = None
        self.clear()

    # The shown plan

    @property
    def result(self):
        return self.plan.result if self.plan else None

    @property
    def nodes(self):
        return self.plan.nodes if self.plan else None

    @property
    def inputs(self):
        return self.plan.inputs if self.plan else None

    def set_plan(self, plan: EditedPlan, settings, screws_edited: bool) -> None:
        """Show a new design: the edits are now measured against it."""
        self.plan = plan
        self.designed_settings = settings
        self.designed_geometry = self._geometry_of(plan.nodes)
        self.failed_update = None
        self.screws_edited = screws_edited
        self.interacting = False

    def clear(self) -> None:
        self.timer.stop()
        self.plan = None
        self.designed_settings = self.designed_geometry = self.failed_update = None
        self.screws_edited = self.interacting = False

    # Decisions

    def attempt(self, settings) -> tuple:
        """What an update is made from: settings and markups positions."""
        geometry = self._geometry_of(self.plan.nodes) if self.plan else None
        return settings, geometry

    def update_failed(self, attempt: tuple) -> None:
        self.failed_update = attempt

    def screws_should_reset(self, case_id: str, screws_per_end: int) -> bool:
        """Lay the screws out again unless the user placed them by hand; a new number of screws per end always needs a
        new layout. Another case (a plan loaded with the scene) keeps its screws."""
        if self.plan is None or self.plan.result.plan.case_id != case_id:
            return False
        if screws_per_end != self.plan.result.plan.screws.per_end:
            return True
        return not self.screws_edited

    def level_labels_for(self, case_id: str, ct_node, from_selection: Callable[[], Any]):
        """Level labels for a redesign: the shown plan's own when it is this case on this CT, else the selection's."""
        plan = self.plan
        if plan is not None and plan.result.plan.case_id == case_id and plan.inputs[0] is ct_node:
            return plan.level_labels
        return from_selection()

    def settings_changed(self, settings, auto_update: bool, busy: bool) -> bool:
        """A setting changed: (re)start the countdown when the shown plan is out of date. True if started."""
        if (auto_update and self.plan is not None and not busy and settings != self.designed_settings
                and self.attempt(settings) != self.failed_update):
            self.timer.start()  # restarts a running countdown: one redesign per burst of changes
            return True
        return False

    def interaction_started(self) -> None:
        self.interacting = True

    def interaction_ended(self, settings, auto_update: bool, busy: bool) -> str:
        self.interacting = False
        return self.markups_modified(settings, auto_update, busy)

    def markups_modified(self, settings, auto_update: bool, busy: bool) -> str:
        """A markups node of the plan changed: schedule a redesign if its geometry really moved."""
        if busy or self.interacting or self.plan is None:
            return IGNORED
        geometry = self._geometry_of(self.plan.nodes)
        if geometry == self.designed_geometry:
            return IGNORED
        if geometry["screws"] != self.designed_geometry["screws"]:
            self.screws_edited = True
        if not auto_update:
            return NEEDS_UPDATE
        if (settings, geometry) == self.failed_update:
            return IGNORED
        self.timer.start()
        return SCHEDULED

    def countdown_ended(self, busy: bool) -> bool:
        """The countdown ran out: True if the plan should be redesigned now; during a drag or an engine call the
        countdown starts again."""
        if self.plan is None:
            return False
        if busy or self.interacting:
            self.timer.start()
            return False
        return True

    def take_pending(self) -> bool:
        """Stop the countdown; True if a redesign was pending (the caller runs it now, e.g. before an export)."""
        pending = self.timer.isActive()
        self.timer.stop()
        return pending
