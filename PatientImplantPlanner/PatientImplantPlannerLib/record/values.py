"""Values of the design record: the clinical reference numbers and limits the checklist applies (DESIGN.md, the
published reference cases), and how record values are formatted (missing values read "n/a")."""

from typing import Optional

NA = "n/a"
OK, ATTENTION, TODO = "OK", "ATTENTION", "TO DO"

# Reference values (DESIGN.md, published reference cases) and the limits the checklist applies.
REFERENCE_ROD_DIAMETER_MM = 5.5
REFERENCE_STIFFNESS_FACTOR = 10.0  # the reference case argued about ten times stiffer and stronger than the rod
FE_LOAD_N = 500.0
TI6AL4V_ELI_MIN_YIELD_MPA = 795.0  # ASTM F136 minimum yield strength
REFERENCE_PORE_UM = (500.0, 600.0)
REFERENCE_POROSITY = 0.70
MAX_SLICE_THICKNESS_MM = 1.25  # the reference cases used 1 mm slices
MAX_INTERFERENCE_MM3 = 1.0  # implant volume allowed inside bone (numerical noise of the booleans)
DRILL_BONE_MM = 2.0  # bone a drill line may cross (partial-volume voxels at the head's own endplate edge)
PORE_TOLERANCE = 0.10  # measured pore within 10 % of the target (or inside the target range)
POROSITY_TOLERANCE = 0.05  # measured porosity at most 5 percentage points below the target
POOR_BONE_FRACTION = 0.5  # more than half of a screw path below 130 HU: poor purchase
GUIDE_CLEARANCE_RANGE_MM = (0.05, 0.4)  # typical printer-dependent fit clearance
MIN_GUIDE_WALL_MM = 1.5  # thinner polyamide walls break when handled



# ---- value formatting ----------------------------------------------------------------------------------------


def _get(d, *keys, default=None):
    """Nested lookup that never raises: _get(record, "implant", "measurements", "mass_g")."""
    for k in keys:
        if isinstance(d, dict) and k in d:
            d = d[k]
        elif isinstance(d, (list, tuple)) and isinstance(k, int) and -len(d) <= k < len(d):
            d = d[k]
        else:
            return default
    return d


def _missing(v) -> bool:
    return v is None or (isinstance(v, str) and not v.strip()) or (isinstance(v, (list, tuple, dict)) and not v)


def _num(v) -> Optional[float]:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if f == f else None  # NaN -> None


def fmt(v, nd: int = 1, unit: str = "") -> str:
    """Format a record value for the report; missing values become 'n/a'."""
    if _missing(v):
        return NA
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        s = str(v)
    elif isinstance(v, float) or type(v).__name__.startswith("float"):
        s = f"{float(v):.{nd}f}"
    elif isinstance(v, (list, tuple)):
        if all(_num(x) is not None and not isinstance(x, bool) for x in v):
            s = "(" + ", ".join(fmt(float(x), nd) for x in v) + ")"
        else:
            return "; ".join(fmt(x, nd) for x in v)
    elif isinstance(v, dict):
        return "; ".join(f"{k}: {fmt(x, nd)}" for k, x in v.items())
    else:
        s = str(v)
    return f"{s} {unit}".strip() if unit else s


def _fraction(v) -> Optional[float]:
    """A fraction from a value given either as a fraction (0.7) or as a percentage (70)."""
    f = _num(v)
    if f is None:
        return None
    return f / 100.0 if f > 1.0 else f


def _pct(v, nd: int = 0) -> str:
    f = _fraction(v)
    return NA if f is None else f"{100 * f:.{nd}f} %"


def _pore_target(v) -> Optional[tuple]:
    """(low, high) µm from a single target or a [low, high] range."""
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(_num(x) is not None for x in v):
        return float(v[0]), float(v[1])
    f = _num(v)
    return (f, f) if f is not None else None


def _pore_text(v) -> str:
    t = _pore_target(v)
    if t is None:
        return NA
    return f"{t[0]:.0f}" if t[0] == t[1] else f"{t[0]:.0f}-{t[1]:.0f}"


def _grade_fractions(grade) -> dict:
    """HU grade of a screw path as fractions (accepts fractions or percentages)."""
    if not isinstance(grade, dict):
        return {}
    vals = {k: _num(grade.get(k)) for k in ("lt130", "130to250", "gt250")}
    present = [x for x in vals.values() if x is not None]
    scale = 100.0 if present and sum(present) > 1.5 else 1.0
    return {k: (x / scale if x is not None else None) for k, x in vals.items()}


def _grade_text(grade) -> str:
    g = _grade_fractions(grade)
    if not g or all(x is None for x in g.values()):
        return NA
    return " / ".join(NA if g[k] is None else f"{100 * g[k]:.0f}" for k in ("lt130", "130to250", "gt250")) + " %"


def _dims(v) -> str:
    if isinstance(v, (list, tuple)) and v:
        return " x ".join(fmt(x, 2) if isinstance(x, float) else str(x) for x in v)
    return fmt(v)


def _plate_text(plate) -> str:
    if not isinstance(plate, dict) or not plate:
        return NA
    return (
        f"centre {fmt(plate.get('centre'))} mm; normal {fmt(plate.get('normal'), 2)}; "
        f"radii L-R {fmt(plate.get('radius_lr'))} / A-P {fmt(plate.get('radius_ap'))} mm"
    )


def axial_stress_estimate_mpa(area_mm2) -> Optional[float]:
    """Mean axial compressive stress F/A under the reference 500 N load (a beam estimate, not an FE result)."""
    a = _num(area_mm2)
    return FE_LOAD_N / a if a and a > 0 else None
