"""The ``convert_units`` tool, on :mod:`pint`.

pint knows the units; this module reads what people write into names pint understands:
``C``/``F`` are temperatures (pint reads coulomb and farad), ``kb``/``mb`` are kilobytes and
megabytes while ``Kb``/``Mb`` are kilobits and megabits, ``fl oz`` is one unit and not
femtolitre times ounce, ``m3`` is a cubic metre. Names are tried as written first, then
lower-cased. Temperatures are offset units, so values convert through pint's ``Quantity``.
"""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING

from duma.errors import first_line
from duma.plugins.tools.common import ToolException, format_number, make_tool

if TYPE_CHECKING:
    import pint

MAX_UNIT_CHARS = 60

# Units pint lacks, in pint's definition syntax.
EXTRA_DEFINITIONS = (
    "jin = 0.5 * kilogram = 斤",
    "@alias gram = gramme",
    "@alias stone = st",
    "@alias week = wk",
)

# What people write -> pint's name, where pint reads the spelling as another unit or not at all.
SPELLINGS = {
    "C": "degC", "c": "degC", "℃": "degC", "centigrade": "degC",  # pint: coulomb, speed of light
    "F": "degF", "f": "degF", "℉": "degF",  # pint: farad
    "k": "kelvin",  # pint: Boltzmann constant
    "kilo": "kilogram",  # pint: a prefix
    "fl oz": "fluid_ounce", "us ton": "short_ton", "us gallon": "gallon", "uk gallon": "imperial_gallon",
    "kmh": "km/h", "kph": "km/h", "kmph": "km/h",
    '"': "inch", "'": "foot",
    # Chinese names (a slow mind asked in Chinese may copy them from the question)
    "摄氏度": "degC", "摄氏": "degC", "华氏度": "degF", "华氏": "degF", "开尔文": "kelvin",
    "公里": "km", "千米": "km", "米": "m", "厘米": "cm", "毫米": "mm", "英里": "mi", "英尺": "ft", "英寸": "inch",
    "码": "yard", "海里": "nautical_mile", "公斤": "kg", "千克": "kg", "克": "g", "毫克": "mg", "吨": "t",
    "磅": "lb", "盎司": "oz", "升": "l", "毫升": "ml", "加仑": "gal", "小时": "h", "分钟": "min", "秒": "s",
    "天": "day", "周": "week", "星期": "week", "年": "year",
}

# Data sizes: ``B``/``byte`` is a byte, ``bit`` a bit; a bare ``b`` is a bit after an upper-case
# prefix (``Mb``, as standards write it) and a byte after a lower-case one (``mb``, as people
# write megabytes). ``i`` marks a binary prefix (``MiB``).
_DATA_UNIT = re.compile(r"^([kmgtpe]?)(i?)(b|bits?|bytes?)$", re.IGNORECASE)
_DECIMAL_PREFIXES = {"": "", "k": "kilo", "m": "mega", "g": "giga", "t": "tera", "p": "peta", "e": "exa"}
_BINARY_PREFIXES = {"k": "kibi", "m": "mebi", "g": "gibi", "t": "tebi", "p": "pebi", "e": "exbi"}

_DEGREE = re.compile(r"^(?:degrees?\s+|°\s*)", re.IGNORECASE)
_POWER_SUFFIX = re.compile(r"^([^\W\d_]+)([23])$")  # m3, cm2
_IMPLICIT_PRODUCT = re.compile(r"[\w)]\*(?!\*)")
_UNIT_TEXT = re.compile(r"^[^\W\d_][\w\s/*^()²³-]*$")  # letters first; no dots, semicolons, quotes

# Dimension names for error messages, as pint's derived dimensions.
_NAMED_DIMENSIONS = (
    "length", "mass", "time", "temperature", "area", "volume", "speed", "acceleration", "force",
    "energy", "power", "pressure", "frequency", "density", "current", "luminosity", "substance",
)
# Named in every unknown-unit error, grouped by dimension: the shipped slow mind was trained
# on observations in exactly this form and recovers from them (rewording it costs accuracy).
UNIT_EXAMPLES = "; ".join(f"{dimension}: {units}" for dimension, units in {
    "length": "m, km, cm, mm, in, ft, yd, mi",
    "mass": "kg, g, mg, t, lb, oz, st",
    "volume": "l, ml, m3, gal, qt, pt, cup, fl oz, tbsp, tsp",
    "time": "s, ms, min, h, day, week, year",
    "speed": "m/s, km/h, mph, knot, ft/s",
    "temperature": "C, F, K",
    "data": "B, KB, MB, GB, TB, KiB, MiB, GiB, bit, Mbit",
}.items())


@functools.cache
def unit_registry() -> pint.UnitRegistry:
    """The one registry every conversion uses, built on first use (building it takes a while)."""
    import pint

    registry = pint.UnitRegistry()
    for definition in EXTRA_DEFINITIONS:
        registry.define(definition)
    return registry


def _data_unit(name: str) -> str | None:
    match = _DATA_UNIT.match(name)
    if match is None:
        return None
    prefix, binary, unit = match.groups()
    base = "bit" if unit.lower().startswith("bit") or (unit == "b" and (not prefix or prefix.isupper())) else "byte"
    if binary:
        if not prefix:
            return None
        return _BINARY_PREFIXES[prefix.lower()] + base
    return _DECIMAL_PREFIXES[prefix.lower()] + base


def _parse(registry: pint.UnitRegistry, name: str) -> pint.Unit | None:
    """``name`` as pint reads it, or None when pint does not know it or would multiply two
    words (``us ton`` is not microsecond times ton)."""
    from pint.util import string_preprocessor

    if not _UNIT_TEXT.match(name):
        return None
    if "*" not in name and _IMPLICIT_PRODUCT.search(string_preprocessor(name)):
        return None
    try:
        unit = registry.parse_units(name)
    except Exception:  # pint's parser raises many kinds (TokenError, AssertionError...) on junk
        return None
    return unit if isinstance(unit, registry.Unit) else None


def find_unit(name: str) -> pint.Unit:
    """The pint unit for a name people write; raises ``ToolException`` naming it."""
    raw = (name or "").strip()
    if not raw:
        raise ToolException(f"give a unit, e.g. convert_units(5, km, mi); known units: {UNIT_EXAMPLES}")
    if len(raw) > MAX_UNIT_CHARS:
        raise ToolException(f"the unit {raw[:MAX_UNIT_CHARS]!r}... is too long; use a unit name such as km or mph")
    registry = unit_registry()
    text = _DEGREE.sub("", raw) or raw
    for candidate in dict.fromkeys([text, text.lower()]):
        spelled = _data_unit(candidate) or SPELLINGS.get(candidate)
        if spelled is None and candidate.endswith("s"):
            spelled = SPELLINGS.get(candidate[:-1])
        if spelled is None:
            spelled = _POWER_SUFFIX.sub(r"\1**\2", candidate)
        for spelling in dict.fromkeys([spelled, re.sub(r"[\s-]+", "_", spelled)]):
            unit = _parse(registry, spelling)
            if unit is not None and (not unit.dimensionless or _root_unit(unit) != "dimensionless"):
                return unit  # a plain number such as ``percent`` is no unit to convert
    raise ToolException(f"unknown unit {raw!r}; known units: {UNIT_EXAMPLES}")


def _root_unit(unit: pint.Unit) -> str:
    return str(unit_registry().get_root_units(unit)[1])


def dimension_name(unit: pint.Unit) -> str:
    """``length``, ``speed``, ``data size``... for error messages."""
    registry = unit_registry()
    if unit.dimensionless:
        return "data size" if _root_unit(unit) == "bit" else _root_unit(unit)
    dimensionality = unit.dimensionality
    for name in _NAMED_DIMENSIONS:
        if registry.get_dimensionality(f"[{name}]") == dimensionality:
            return name
    return str(dimensionality)


def convert(value: float, from_unit: str, to_unit: str) -> float:
    """``value`` in ``from_unit`` expressed in ``to_unit``."""
    import pint

    source, target = find_unit(from_unit), find_unit(to_unit)
    # Bytes and radians are both dimensionless to pint: their root units tell them apart.
    if source.dimensionality != target.dimensionality or _root_unit(source) != _root_unit(target):
        raise ToolException(
            f"cannot convert {from_unit} ({dimension_name(source)}) to {to_unit} ({dimension_name(target)})"
        )
    registry = unit_registry()
    is_temperature = source.dimensionality == registry.get_dimensionality("[temperature]")
    try:
        quantity = registry.Quantity(value, source)
        if is_temperature and quantity.to("kelvin").magnitude < -1e-9:
            raise ToolException(f"{format_number(value)} {from_unit} is below absolute zero")
        result = float(quantity.to(target).magnitude)
    except pint.errors.PintError as exc:
        raise ToolException(f"cannot convert {from_unit} to {to_unit}: {first_line(exc)}") from None
    # Offset units convert through kelvin, which leaves float noise (32 F -> 5.7e-14 C).
    return round(result, 9) if is_temperature else result


_QUANTITY = re.compile(
    r"^\s*([-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+)\s*(.*?)\s*$", re.S
)
_TO = re.compile(r"\s+(?:to|into|in)\s+|\s*(?:->|→)\s*", re.IGNORECASE)


def split_quantity(value: float | str) -> tuple[float, list[str]]:
    """``5`` -> (5, []); ``"5 km"`` -> (5, ["km"]); ``"5 km to mi"`` -> (5, ["km", "mi"])."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value), []
    match = _QUANTITY.match(str(value))
    if match is None:
        raise ToolException(f"{value!r} is not a number; e.g. convert_units(5, km, mi)")
    number = float(match.group(1).replace(",", ""))
    rest = match.group(2)
    if not rest:
        return number, []
    return number, [u.strip() for u in _TO.split(rest, maxsplit=1) if u.strip()]


def convert_units(value: float | str, from_unit: str = "", to_unit: str = "") -> str:
    """Convert a quantity between units, e.g. convert_units(5, km, mi) -> '5 km = 3.106856 mi'.
    The slow mind may also write the units into the value: convert_units(5 km, mi) or
    convert_units(5 km to mi)."""
    number, units = split_quantity(value)
    units += [u.strip() for u in (from_unit, to_unit) if u and u.strip()]
    if len(units) != 2:
        raise ToolException("give a value, its unit and the unit to convert to, e.g. convert_units(5, km, mi)")
    source, target = units
    result = convert(number, source, target)
    return f"{format_number(number, 8)} {source} = {format_number(result, 7)} {target}"


convert_units_tool = make_tool(
    convert_units,
    "convert_units",
    "Convert units, e.g. convert_units(5, km, mi).\n"
    "Length, mass, volume, time, speed, temperature (C/F/K), data size and more; an unknown unit's error names it.",
)
