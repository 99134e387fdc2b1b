"""The ``convert_units`` tool: length, mass, volume, time, speed, data size and temperature.

Every unit but temperature is a factor to its dimension's base unit (metre, kilogram, litre,
second, metre per second, byte). Temperatures are affine, so they convert through kelvin.
Unit names are matched exactly first (``B`` byte vs ``b`` bit, ``Mb`` vs ``MB``), then
case-insensitively, with plural ``s`` and degree signs tolerated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from duma.plugins.tools.common import ToolException, format_number, make_tool


@dataclass(frozen=True)
class Unit:
    dimension: str
    factor: float = 1.0  # base units per one of this unit
    offset: float = 0.0  # temperature only: kelvin = value * factor + offset


_INCH = 0.0254
_FOOT = 12 * _INCH
_MILE = 5280 * _FOOT
_POUND = 0.45359237
_US_GALLON = 3.785411784
_HOUR = 3600.0

# name -> unit; every alias listed once, lower-case unless the case matters.
UNITS: dict[str, Unit] = {}


def _define(dimension: str, factor: float, *names: str, offset: float = 0.0) -> None:
    for name in names:
        UNITS[name] = Unit(dimension, factor, offset)


_define("length", 1.0, "m", "meter", "metre")
_define("length", 1000.0, "km", "kilometer", "kilometre")
_define("length", 0.01, "cm", "centimeter", "centimetre")
_define("length", 0.001, "mm", "millimeter", "millimetre")
_define("length", 1e-6, "µm", "um", "micrometer", "micrometre", "micron")
_define("length", 1e-9, "nm", "nanometer", "nanometre")
_define("length", _INCH, "in", "inch", "inches", '"')
_define("length", _FOOT, "ft", "foot", "feet", "'")
_define("length", 3 * _FOOT, "yd", "yard")
_define("length", _MILE, "mi", "mile")
_define("length", 1852.0, "nmi", "nautical mile")
_define("length", 1e3 * 1e3 * 9.4607304725808e9, "ly", "light year", "light-year")

_define("mass", 1.0, "kg", "kilogram", "kilo")
_define("mass", 0.001, "g", "gram", "gramme")
_define("mass", 1e-6, "mg", "milligram")
_define("mass", 1e-9, "µg", "ug", "microgram")
_define("mass", 1000.0, "t", "tonne", "metric ton")
_define("mass", _POUND, "lb", "lbs", "pound")
_define("mass", _POUND / 16, "oz", "ounce")
_define("mass", 14 * _POUND, "st", "stone")
_define("mass", 2000 * _POUND, "short ton", "us ton")
_define("mass", 0.5, "斤", "jin")

_define("volume", 1.0, "l", "liter", "litre")
_define("volume", 0.001, "ml", "milliliter", "millilitre", "cc", "cm3", "cm³")
_define("volume", 0.01, "cl", "centiliter", "centilitre")
_define("volume", 0.1, "dl", "deciliter", "decilitre")
_define("volume", 1000.0, "m3", "m³", "cubic meter", "cubic metre")
_define("volume", _US_GALLON, "gal", "gallon", "us gallon")
_define("volume", 4.54609, "imperial gallon", "uk gallon")
_define("volume", _US_GALLON / 4, "qt", "quart")
_define("volume", _US_GALLON / 8, "pt", "pint")
_define("volume", _US_GALLON / 16, "cup")
_define("volume", _US_GALLON / 128, "fl oz", "floz", "fluid ounce")
_define("volume", _US_GALLON / 256, "tbsp", "tablespoon")
_define("volume", _US_GALLON / 768, "tsp", "teaspoon")

_define("time", 1.0, "s", "sec", "second")
_define("time", 0.001, "ms", "millisecond")
_define("time", 1e-6, "µs", "us", "microsecond")
_define("time", 60.0, "min", "minute")
_define("time", _HOUR, "h", "hr", "hour")
_define("time", 24 * _HOUR, "d", "day")
_define("time", 7 * 24 * _HOUR, "wk", "week")
_define("time", 365.25 * 24 * _HOUR, "yr", "year")  # Julian year

_define("speed", 1.0, "m/s", "mps", "meter per second", "metre per second", "meters per second")
_define("speed", 1000 / _HOUR, "km/h", "kmh", "kph", "kmph", "kilometer per hour", "kilometers per hour")
_define("speed", _MILE / _HOUR, "mph", "mi/h", "mile per hour", "miles per hour")
_define("speed", 1852 / _HOUR, "kn", "kt", "knot")
_define("speed", _FOOT, "ft/s", "fps", "foot per second", "feet per second")

_define("temperature", 1.0, "k", "kelvin", offset=0.0)
_define("temperature", 1.0, "c", "°c", "celsius", "centigrade", "℃", offset=273.15)
_define("temperature", 5 / 9, "f", "°f", "fahrenheit", "℉", offset=273.15 - 32 * 5 / 9)

# Data sizes: case matters for the short forms (B byte, b bit); decimal and binary prefixes.
_define("data", 1.0, "B", "byte")
_define("data", 1 / 8, "b", "bit")
for _i, (_dec, _bin, _word) in enumerate(
    [("K", "Ki", "kilo"), ("M", "Mi", "mega"), ("G", "Gi", "giga"), ("T", "Ti", "tera"), ("P", "Pi", "peta")],
    start=1,
):
    _define("data", 1000.0**_i, f"{_dec}B", f"{_dec.lower()}B", f"{_word}byte")
    _define("data", 1024.0**_i, f"{_bin}B", f"{_bin.lower()}b", f"{_bin[0].lower()}ib", f"{_word[:2]}bibyte")
    # "Mb" is a megabit, but lower-case "mb" is read as a megabyte (see _LOWER below).
    _define("data", 1000.0**_i / 8, f"{_dec}b", f"{_dec}bit", f"{_dec.lower()}bit", f"{_word}bit")

# Case-insensitive fallback; the first definition of a lower-cased name wins, so "kb" and
# "mb" (written lower-case by most people) mean kilobyte and megabyte, not bits.
_LOWER: dict[str, Unit] = {}
for _name, _unit in UNITS.items():
    _LOWER.setdefault(_name.lower(), _unit)
for _name in ("kb", "mb", "gb", "tb", "pb"):
    _LOWER[_name] = UNITS[_name.upper()]

_DIMENSION_EXAMPLES = {
    "length": "m, km, cm, mm, in, ft, yd, mi",
    "mass": "kg, g, mg, t, lb, oz, st",
    "volume": "l, ml, m3, gal, qt, pt, cup, fl oz, tbsp, tsp",
    "time": "s, ms, min, h, day, week, year",
    "speed": "m/s, km/h, mph, knot, ft/s",
    "temperature": "C, F, K",
    "data": "B, KB, MB, GB, TB, KiB, MiB, GiB, bit, Mbit",
}


def find_unit(name: str) -> Unit:
    """Look a unit up by name; raises ``ToolException`` listing the known ones."""
    raw = (name or "").strip()
    candidates = [raw, re.sub(r"^degrees?\s+", "", raw.lower()).replace("°", "")]
    lookups = [(key, UNITS) for key in candidates] + [(key.lower(), _LOWER) for key in candidates]
    for key, table in lookups:
        if key in table:
            return table[key]
        if len(key) > 2 and key.endswith("s") and key[:-1] in table:  # plurals: "meters", "hrs"
            return table[key[:-1]]
        if key.endswith("es") and key[:-2] in table:  # "inches"
            return table[key[:-2]]
    known = "; ".join(f"{dim}: {examples}" for dim, examples in _DIMENSION_EXAMPLES.items())
    raise ToolException(f"unknown unit {name!r}; known units: {known}")


def convert(value: float, from_unit: str, to_unit: str) -> float:
    """``value`` in ``from_unit`` expressed in ``to_unit``."""
    source, target = find_unit(from_unit), find_unit(to_unit)
    if source.dimension != target.dimension:
        raise ToolException(
            f"cannot convert {source.dimension} ({from_unit}) to {target.dimension} ({to_unit})"
        )
    base = value * source.factor + source.offset
    result = (base - target.offset) / target.factor
    if source.dimension == "temperature" and base < -1e-9:
        raise ToolException(f"{format_number(value)} {from_unit} is below absolute zero")
    return result


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
    "Length, mass, volume, time, speed, temperature (C/F/K) and data size; an unknown unit's error lists the known ones.",
)
