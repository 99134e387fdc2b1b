"""Date tools: ``today``, ``date_diff``, ``weekday``, ``add_days``.

Dates are ISO (``2024-03-01``) or a few common forms: ``2024/03/01``, ``01.03.2024``,
``March 1, 2024``, ``1 Mar 2024``, ``20240301``, ``2024年3月1日``, ``03/01/2024`` when the day
and month cannot be confused, and the words ``today``, ``tomorrow``, ``yesterday``.

Today's date comes from :func:`today_date`: the environment variable ``DUMA_TODAY``
(an ISO date) fixes it, e.g. for tests and reproducible evaluations; otherwise the local clock.
"""

from __future__ import annotations

import datetime as dt
import os
import re

from duma.plugins.tools.common import ToolException, make_tool

TODAY_ENV = "DUMA_TODAY"
MAX_DAYS_OFFSET = 3_650_000  # ten thousand years either way is plenty

_MONTHS = {
    name: number
    for number, names in enumerate(
        [
            ("january", "jan"), ("february", "feb"), ("march", "mar"), ("april", "apr"),
            ("may",), ("june", "jun"), ("july", "jul"), ("august", "aug"),
            ("september", "sep", "sept"), ("october", "oct"), ("november", "nov"), ("december", "dec"),
        ],
        start=1,
    )
    for name in names
}
_MONTH_NAME = "|".join(sorted(_MONTHS, key=len, reverse=True))
_FORMS_HINT = "use YYYY-MM-DD, e.g. 2024-03-01"


def today_date() -> dt.date:
    """Today, or the date in ``DUMA_TODAY`` when set (a fixed clock for tests)."""
    fixed = os.environ.get(TODAY_ENV, "").strip()
    if fixed:
        try:
            return dt.date.fromisoformat(fixed)
        except ValueError:
            raise ToolException(f"{TODAY_ENV}={fixed!r} is not an ISO date (YYYY-MM-DD)") from None
    return dt.date.today()


def _make_date(year: int, month: int, day: int, original: str) -> dt.date:
    try:
        return dt.date(year, month, day)
    except ValueError as exc:
        raise ToolException(f"{original!r} is not a valid date ({exc})") from None


def parse_date(text: str) -> dt.date:
    """Parse one of the accepted date forms; raises ``ToolException`` naming the input."""
    if not isinstance(text, str) or not text.strip():
        raise ToolException(f"give a date; {_FORMS_HINT}")
    original = text
    s = text.strip().lower().rstrip(".")
    relative = {"today": 0, "now": 0, "tomorrow": 1, "yesterday": -1, "今天": 0, "明天": 1, "昨天": -1}
    if s in relative:
        return today_date() + dt.timedelta(days=relative[s])
    s = re.sub(r"^(?:mon|tue|wed|thu|fri|sat|sun)[a-z]*,?\s+", "", s)  # "Friday, March 1, 2024"
    if m := re.fullmatch(r"(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})(?:[t ].*)?", s):
        return _make_date(int(m[1]), int(m[2]), int(m[3]), original)
    if m := re.fullmatch(r"(\d{4})(\d{2})(\d{2})", s):
        return _make_date(int(m[1]), int(m[2]), int(m[3]), original)
    if m := re.fullmatch(r"(\d{4})\s*年\s*(\d{1,2})\s*月\s*(\d{1,2})\s*[日号]?", s):
        return _make_date(int(m[1]), int(m[2]), int(m[3]), original)
    if m := re.fullmatch(r"(\d{1,2})\.(\d{1,2})\.(\d{4})", s):  # 01.03.2024 is day.month.year
        return _make_date(int(m[3]), int(m[2]), int(m[1]), original)
    if m := re.fullmatch(r"(\d{1,2})[/-](\d{1,2})[/-](\d{4})", s):
        first, second, year = int(m[1]), int(m[2]), int(m[3])
        if first > 12 >= second:
            return _make_date(year, second, first, original)
        if second > 12 >= first or first == second:
            return _make_date(year, first, second, original)
        raise ToolException(f"{original!r} is ambiguous (day/month or month/day?); {_FORMS_HINT}")
    if m := re.fullmatch(rf"({_MONTH_NAME})\.?\s+(\d{{1,2}})(?:st|nd|rd|th)?,?\s+(\d{{4}})", s):
        return _make_date(int(m[3]), _MONTHS[m[1]], int(m[2]), original)
    if m := re.fullmatch(rf"(\d{{1,2}})(?:st|nd|rd|th)?\s+(?:of\s+)?({_MONTH_NAME})\.?,?\s+(\d{{4}})", s):
        return _make_date(int(m[3]), _MONTHS[m[2]], int(m[1]), original)
    raise ToolException(f"cannot read {original!r} as a date; {_FORMS_HINT}")


def today() -> str:
    """Today's date as YYYY-MM-DD with its weekday, e.g. '2024-03-01 (Friday)'."""
    date = today_date()
    return f"{date.isoformat()} ({date.strftime('%A')})"


def date_diff(start: str, end: str) -> int:
    """Days from start to end (negative when end is before start)."""
    return (parse_date(end) - parse_date(start)).days


def weekday(date: str) -> str:
    """The day of the week of a date, e.g. 'Friday'."""
    return parse_date(date).strftime("%A")


def add_days(date: str, days: int) -> str:
    """The date a number of days after (or before, when negative) a date, as YYYY-MM-DD."""
    if abs(days) > MAX_DAYS_OFFSET:
        raise ToolException(f"{days} days is too far; at most {MAX_DAYS_OFFSET} either way")
    try:
        return (parse_date(date) + dt.timedelta(days=days)).isoformat()
    except OverflowError:
        raise ToolException("the resulting date is outside years 1-9999") from None


# The first line of each description is what the slow mind's prompt lists: kept short, since the
# prompt is sent on every step (and is most of each training trace).
today_tool = make_tool(today, "today", "Today's date and weekday.\nTakes no arguments; answers YYYY-MM-DD (Weekday).")
date_diff_tool = make_tool(
    date_diff, "date_diff", "Days from one date to another.\n"
    "Dates as YYYY-MM-DD, e.g. date_diff(2024-01-01, 2024-03-01); negative when the end is before the start.",
)
weekday_tool = make_tool(weekday, "weekday", "The weekday of a date (YYYY-MM-DD).\nAnswers the day's name, e.g. weekday(2024-03-01) -> Friday.")
add_days_tool = make_tool(
    add_days, "add_days", "The date N days after a date.\nE.g. add_days(2024-03-01, 30); a negative N counts back.",
)

DATE_TOOLS = [today_tool, date_diff_tool, weekday_tool, add_days_tool]
