"""The plan JSON checked against the plan's own dataclasses, at every level, before anything else runs.

Known keys and value types come from the dataclass fields (``Plan`` and the parameter classes it nests, the export,
lattice and guide parameters of ``outputs``), so a field added to one of them is accepted and type-checked without
touching this module. What annotations do not spell out (the shape of a list, the object a ``dict`` holds) is
taken from the field's name and default: see ``_SHAPES`` and ``_OBJECTS``. Ranges stay with each class's own
``validate()``; ``check_plan`` runs them all before the CT is read.
"""

import difflib
import math
import typing
from dataclasses import MISSING, fields, is_dataclass

import numpy as np

from ..core.anatomy import Endplate
from ..core.errors import PlanError
from ..export.parameters import ExportParameters
from ..parts.guides import GuideParameters
from ..parts.lattice import LatticeParameters
from .screws import Trajectory

SCHEMA_NAME = "PatientImplantPlanner.plan"
SCHEMA_DOC = "docs/plan-schema.md"
# Written by Plan.to_dict next to the fields.
META_KEYS = {"schema": str, "schema_version": int, "software_version": str}

POINT, POINTS, NUMBERS, STRINGS, ANY = "point", "points", "numbers", "strings", "any"
# List shapes by field name; other lists: a name ending in "_ras" is a point, else the shape of the default's items.
_SHAPES = {
    "axis_control_points": POINTS,
    "seeds_ras": POINTS,
    "exclude_seeds_ras": POINTS,
    "roi_size_mm": POINT,
    "centre": POINT,
    "normal": POINT,
    "anterior": POINT,
    "entry": POINT,
    "target": POINT,
}
_DESCRIBE = {
    POINT: "three numbers [R, A, S] (mm)",
    POINTS: "a list of points [[R, A, S], ...] (mm)",
    NUMBERS: "a list of numbers",
    STRINGS: "a list of strings",
    ANY: "a list",
}


def _objects() -> dict:
    """Fields typed ``dict``/``list`` that hold records: name -> (schema, is a list of them)."""
    endplate = _schema_of(Endplate)
    trajectory = {k: v for k, v in _schema_of(Trajectory).items() if k != "notes"}  # not read back from a plan
    return {
        "proximal_endplate": (endplate, False),
        "distal_endplate": (endplate, False),
        "trajectories": (trajectory, True),
        "outputs": (outputs_schema(), False),
    }


def _schema_of(cls) -> dict:
    """name -> (annotation, default, required) for the fields of a dataclass."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in fields(cls):
        if f.default is not MISSING:
            default = f.default
        elif f.default_factory is not MISSING:
            default = f.default_factory()
        else:
            default = MISSING
        out[f.name] = (hints.get(f.name, f.type), None if default is MISSING else default, default is MISSING)
    return out


def outputs_schema() -> dict:
    """The plan's ``outputs`` block: the export parameters (formats, parts, coordinate system, ...) plus the
    ``lattice`` and ``guides`` parameter objects."""
    schema = _schema_of(ExportParameters)
    schema["lattice"] = (LatticeParameters, None, False)
    schema["guides"] = (GuideParameters, None, False)
    return schema


def plan_schema(plan_cls) -> dict:
    """The schema of a plan JSON: the meta keys plus the fields of ``plan_cls`` (design.plan.Plan)."""
    schema = {k: (t, None, False) for k, t in META_KEYS.items()}
    schema.update(_schema_of(plan_cls))
    return schema


# ---------------------------------------------------------------------------------------------------- checking


def validate_plan_dict(data, plan_cls) -> None:
    """Raise ``PlanError`` naming the key (as a dotted path) for anything in a plan JSON that is not a known key
    or has the wrong type. Accepts exactly what ``Plan.to_dict`` writes."""
    if not isinstance(data, dict):
        raise PlanError(
            f"The plan is a JSON {_json_kind(data)}, not an object of plan settings.",
            "A plan is a JSON object {\"case_id\": ..., ...}: write an example with `implant-planner write-demo-plan "
            f"plan.json` and edit it ({SCHEMA_DOC}).",
        )
    if data.get("schema", SCHEMA_NAME) != SCHEMA_NAME:
        raise PlanError(f"Not a plan file (schema {data.get('schema')!r}).",
                        "Give a PatientImplantPlanner plan JSON (`implant-planner write-demo-plan` writes one).")
    _check_object(data, plan_schema(plan_cls), "")


def _check_object(data: dict, schema: dict, path: str) -> None:
    where = "" if path else " at the top level"
    for key in data:
        if not isinstance(key, str) or key not in schema:
            close = difflib.get_close_matches(str(key), list(schema), n=1)
            hint = f"Did you mean {close[0]!r}? " if close else ""
            raise PlanError(f"Unknown plan key {_join(path, key)!r}{where} (not a plan setting; misspelt?).",
                            f"{hint}Known keys here: {', '.join(sorted(schema))} ({SCHEMA_DOC}).")
    for key, (annotation, default, required) in schema.items():
        if key not in data:
            if required:
                raise PlanError(f"Plan key {_join(path, key)!r} is missing.",
                                f"Add {_join(path, key)!r} ({_expected(annotation, key, default)}).")
            continue
        _check_value(data[key], annotation, default, key, _join(path, key))


def _check_value(value, annotation, default, name: str, path: str) -> None:
    annotation, optional = _unwrap_optional(annotation)
    if value is None:
        if optional or default is None:
            return
        raise PlanError(f"Plan key {path!r} is null.", f"Set it to {_expected(annotation, name, default)}, or leave "
                        "the key out to use the default.")
    if is_dataclass(annotation):
        if not isinstance(value, dict):
            _wrong(path, value, "an object {...}")
        _check_object(value, _schema_of(annotation), path)
        return
    nested = _objects().get(name) if annotation in (dict, list) else None
    if nested is not None:
        schema, is_list = nested
        items = value if is_list else [value]
        if is_list and not isinstance(value, list):
            _wrong(path, value, "a list of objects")
        for i, item in enumerate(items):
            item_path = f"{path}[{i}]" if is_list else path
            if not isinstance(item, dict):
                _wrong(item_path, item, "an object {...}")
            _check_object(item, schema, item_path)
        return
    if annotation in (list, tuple, np.ndarray):
        _check_list(value, _shape(name, default), path)
    elif annotation is dict:
        if not isinstance(value, dict):
            _wrong(path, value, "an object {...}")
    elif annotation in (bool, int, float, str):
        if not _scalar_ok(value, annotation):
            _wrong(path, value, _expected(annotation, name, default))


def _scalar_ok(value, kind) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is str:
        return isinstance(value, str)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    return kind is float or float(value).is_integer()


def _shape(name: str, default) -> str:
    if name in _SHAPES:
        return _SHAPES[name]
    if name.endswith("_ras"):
        return POINT
    items = list(default) if isinstance(default, (list, tuple)) else []
    if items and all(_scalar_ok(v, float) for v in items):
        return NUMBERS
    if items and all(isinstance(v, str) for v in items):
        return STRINGS
    return ANY


def _check_list(value, shape: str, path: str) -> None:
    if not isinstance(value, list):
        _wrong(path, value, _DESCRIBE[shape])
    if shape == POINT:
        if len(value) != 3 or not all(_scalar_ok(v, float) for v in value):
            _wrong(path, value, _DESCRIBE[POINT])
    elif shape == POINTS:
        for i, p in enumerate(value):
            _check_list(p, POINT, f"{path}[{i}]")
    elif shape in (NUMBERS, STRINGS):
        kind = float if shape == NUMBERS else str
        for i, v in enumerate(value):
            if not _scalar_ok(v, kind):
                _wrong(f"{path}[{i}]", v, "a number" if kind is float else "a string")


def _wrong(path: str, value, expected: str):
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    raise PlanError(f"Plan key {path!r} is {shown} ({_json_kind(value)}), but it must be {expected}.",
                    f"Set {path!r} to {expected} ({SCHEMA_DOC}).")


def _expected(annotation, name: str, default) -> str:
    annotation, _ = _unwrap_optional(annotation)
    example = f" such as {default!r}" if isinstance(default, (int, float, str)) and not isinstance(default, bool) \
        else ""
    if annotation is bool:
        return "true or false"
    if annotation is int:
        return f"a whole number{example}"
    if annotation is float:
        return f"a finite number{example}"
    if annotation is str:
        return f"a string{example}"
    if annotation in (list, tuple, np.ndarray):
        return _DESCRIBE[_shape(name, default)]
    return "an object {...}"


def _unwrap_optional(annotation):
    if typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return annotation, False


def _json_kind(value) -> str:
    if value is None:
        return "null"
    for kind, name in ((bool, "true/false"), (str, "string"), (dict, "object"), (list, "list"),
                       ((int, float), "number")):
        if isinstance(value, kind):
            return name
    return type(value).__name__


def _join(path: str, key) -> str:
    return f"{path}.{key}" if path else str(key)


# ------------------------------------------------------------------------------------------- ranges and outputs


def output_parameters(outputs: dict) -> tuple:
    """(ExportParameters, LatticeParameters, GuideParameters) from a plan's ``outputs`` block, range-checked."""
    outputs = dict(outputs or {})
    lattice = LatticeParameters.from_dict(outputs.pop("lattice", None) or {})
    guides = GuideParameters.from_dict(outputs.pop("guides", None) or {})
    export = ExportParameters.from_dict(outputs)
    for params in (export, lattice, guides):
        params.validate()
    return export, lattice, guides


def check_plan(plan, points_from_levels: bool = False) -> None:
    """Every range check of the plan and its ``outputs``, cheap and before the CT is read. With
    ``points_from_levels`` the vertebra points may still be missing (a label map fills them in later)."""
    from dataclasses import replace

    if points_from_levels:
        # Stand-in points so validate() checks everything else; the real ones are checked once filled in.
        p, d = plan.proximal_point_ras, plan.distal_point_ras
        p = p if p is not None else list(np.add(d if d is not None else [0.0, 0.0, 0.0], [0.0, 0.0, 100.0]))
        d = d if d is not None else list(np.subtract(p, [0.0, 0.0, 100.0]))
        plan = replace(plan, proximal_point_ras=p, distal_point_ras=d)
    plan.validate()
    output_parameters(plan.outputs)
