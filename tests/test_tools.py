"""The built-in tools: good arguments give answers, bad ones give 'Error: ...' observations."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from duma import DumaConfig, host

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_KB = REPO / "examples" / "knowledge"


def tool(name: str):
    return host.get("tool", name)


def knowledge_tool(folder):
    from duma.plugins.tools.knowledge import make_knowledge_tool

    return make_knowledge_tool(folder)


def test_all_builtin_tools_are_registered_with_ordered_args():
    from langchain_core.tools import BaseTool

    from duma.plugins.tools import BUILTIN_TOOL_NAMES

    registered = host.components("tool")
    for name in BUILTIN_TOOL_NAMES:
        assert registered[name].plugin == "tools"
    for name in set(BUILTIN_TOOL_NAMES) - {"search_knowledge"}:
        assert isinstance(registered[name].obj, BaseTool) and registered[name].obj.description
    assert list(tool("calculator").args) == ["expression"]
    assert list(tool("today").args) == []
    assert list(tool("date_diff").args) == ["start", "end"]
    assert list(tool("weekday").args) == ["date"]
    assert list(tool("add_days").args) == ["date", "days"]
    assert list(tool("convert_units").args) == ["value", "from_unit", "to_unit"]
    search_knowledge = tool("search_knowledge")(DumaConfig())
    assert isinstance(search_knowledge, BaseTool) and search_knowledge.description
    assert list(search_knowledge.args) == ["query"]


def test_importing_the_plugin_module_does_not_import_heavy_libraries():
    import subprocess
    import sys

    code = (
        "import sys, duma.plugins.tools, duma.plugins.routers; "
        "heavy = [m for m in ('langchain_core', 'numpy', 'torch', 'duma.routing', 'pint', 'bm25s', 'jieba') "
        "if m in sys.modules]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# --- calculator ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "expression, expected",
    [
        ("2 + 2", "4"),
        ("17% of 2,340", "397.8"),
        ("17%*2340", "397.8"),
        ("17 % of 2340", "397.8"),
        ("50%", "0.5"),
        ("10 % 3", "1"),
        ("(3 + 4) * 2", "14"),
        ("10 / 4", "2.5"),
        ("10 / 5", "2"),
        ("7 // 2", "3"),
        ("2 ** 10", "1024"),
        ("2^10", "1024"),
        ("-3 + +5", "2"),
        ("0.1 + 0.2", "0.3"),
        ("1,234,567 + 1", "1234568"),
        ("max(1,234)", "234"),
        ("min(3, 1, 2)", "1"),
        ("sqrt(16)", "4"),
        ("round(3.14159, 2)", "3.14"),
        ("abs(-7)", "7"),
        ("log(8, 2)", "3"),
        ("What is 3 × 4?", "12"),
        ("12 ÷ 4 =", "3"),
        ("17 percent of 2,340", "397.8"),
        ("3 x 4", "12"),
        ("2.5e3", "2500"),
        # thousands separators inside a call: read as separators when the arguments would not fit
        ("round(2,500 * (1 + 4/100) ** 5, 2)", "3041.63"),
        ("round((1,500 - 1,200) / 1,200 * 100, 1)", "25"),
        ("sqrt(2,025)", "45"),
        ("round(1,234.5678, 2)", "1234.57"),
        ("4,821 * 37", "178377"),
        ("1,250.75 + 3,499.90", "4750.65"),
        ("3 * 4.50 + 2 * 12.99", "39.48"),
        # Chinese operator words and punctuation
        ("100乘以23等于多少？", "2300"),
        ("12除以4", "3"),
        ("3加5减2", "6"),
        ("（2+3）×4", "20"),
    ],
)
def test_calculator_evaluates_arithmetic(expression, expected):
    assert tool("calculator").invoke({"expression": expression}) == expected


@pytest.mark.parametrize(
    "expression, fragment",
    [
        ("__import__('os')", "not allowed"),
        ("__import__('os').system('echo hi')", "not allowed"),
        ("os", "unknown name 'os'"),
        ("x + 1", "unknown name 'x'"),
        ("(1).real", "not allowed"),
        ("().__class__.__bases__", "not allowed"),
        ("'a' * 3", "only numbers"),
        ("lambda: 1", "not allowed"),
        ("[i for i in range(10)]", "not allowed"),
        ("open('/etc/passwd')", "not allowed"),
        ("sqrt(x=4)", "plain numbers"),
        ("9 ** 9 ** 9", "too large"),
        ("2 ** 100000", "too large"),
        ("10 ** 5000", "too large"),
        ("1e308 * 10", "finite"),
        ("1 / 0", "division by zero"),
        ("sqrt(-1)", "math error"),
        ("(1 + 2", "cannot parse"),
        ("1 < 2", "not allowed"),
        ("True + 1", "only numbers"),
        ("", "give an arithmetic expression"),
        ("1" + "+1" * 400, "longer than"),
    ],
)
def test_calculator_refuses_anything_but_arithmetic(expression, fragment):
    started = time.perf_counter()
    result = tool("calculator").invoke({"expression": expression})
    assert result.startswith("Error: ")
    assert fragment in result
    assert time.perf_counter() - started < 1.0  # refusals are instant: no DoS by big powers


def test_calculator_python_function_raises_tool_exception():
    from langchain_core.tools import ToolException

    from duma.plugins.tools.calculator import calculate

    assert calculate("17% of 2,340") == "397.8"
    with pytest.raises(ToolException, match="unknown name"):
        calculate("os")


# --- dates --------------------------------------------------------------------------------


@pytest.fixture
def fixed_today(monkeypatch):
    monkeypatch.setenv("DUMA_TODAY", "2024-03-01")


def test_today_uses_the_fixed_clock(fixed_today):
    assert tool("today").invoke({}) == "2024-03-01 (Friday)"


def test_date_tools(fixed_today):
    assert tool("date_diff").invoke({"start": "2024-01-01", "end": "2024-03-01"}) == 60
    assert tool("date_diff").invoke({"start": "today", "end": "2024-12-25"}) == 299
    assert tool("date_diff").invoke({"start": "2024-03-01", "end": "2024-01-01"}) == -60
    assert tool("date_diff").invoke({"start": "March 1, 2024", "end": "2025/03/01"}) == 365
    assert tool("weekday").invoke({"date": "2024-03-01"}) == "Friday"
    assert tool("weekday").invoke({"date": "1 March 2024"}) == "Friday"
    assert tool("weekday").invoke({"date": "2024年3月1日"}) == "Friday"
    assert tool("weekday").invoke({"date": "tomorrow"}) == "Saturday"
    assert tool("weekday").invoke({"date": "25/12/2024"}) == "Wednesday"
    assert tool("add_days").invoke({"date": "2024-02-28", "days": 2}) == "2024-03-01"
    assert tool("add_days").invoke({"date": "today", "days": "-1"}) == "2024-02-29"


@pytest.mark.parametrize(
    "name, args, fragment",
    [
        ("weekday", {"date": "2024-02-30"}, "not a valid date"),
        ("weekday", {"date": "next tuesday"}, "cannot read"),
        ("weekday", {"date": "03/04/2024"}, "ambiguous"),
        ("weekday", {"date": ""}, "give a date"),
        ("add_days", {"date": "2024-03-01", "days": "many"}, "invalid arguments for add_days"),
        ("add_days", {"date": "9999-12-31", "days": 1}, "outside years"),
        ("date_diff", {"start": "2024-03-01"}, "end"),
    ],
)
def test_date_tools_report_bad_arguments(fixed_today, name, args, fragment):
    result = tool(name).invoke(args)
    assert isinstance(result, str) and result.startswith("Error: ")
    assert fragment in result


def test_bad_fixed_clock_is_reported(monkeypatch):
    monkeypatch.setenv("DUMA_TODAY", "soon")
    assert tool("today").invoke({}).startswith("Error: DUMA_TODAY")


# --- units --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, source, target, expected",
    [
        (5, "km", "mi", "5 km = 3.106856 mi"),
        (100, "°C", "°F", "100 °C = 212 °F"),
        (98.6, "F", "C", "98.6 F = 37 C"),
        (0, "K", "celsius", "0 K = -273.15 celsius"),
        (-40, "C", "F", "-40 C = -40 F"),
        (12, "inches", "cm", "12 inches = 30.48 cm"),
        (1, "lb", "g", "1 lb = 453.5924 g"),
        (1, "gallon", "l", "1 gallon = 3.785412 l"),
        (2, "hours", "min", "2 hours = 120 min"),
        (100, "km/h", "m/s", "100 km/h = 27.77778 m/s"),
        (1, "GiB", "MiB", "1 GiB = 1024 MiB"),
        (1, "GB", "MB", "1 GB = 1000 MB"),
        (100, "Mbit", "MB", "100 Mbit = 12.5 MB"),
        (8, "b", "B", "8 b = 1 B"),
        (60, "mph", "km/h", "60 mph = 96.56064 km/h"),
        (32, "fahrenheit", "celsius", "32 fahrenheit = 0 celsius"),
        (100, "degrees Celsius", "°F", "100 degrees Celsius = 212 °F"),
        (1, "℃", "K", "1 ℃ = 274.15 K"),
        (1, "MiB", "KB", "1 MiB = 1048.576 KB"),
        (1, "KB", "B", "1 KB = 1000 B"),
        (1, "mb", "kb", "1 mb = 1000 kb"),
        (1, "Mb", "KB", "1 Mb = 125 KB"),
        (1, "fl oz", "ml", "1 fl oz = 29.57353 ml"),
        (1, "cup", "fl oz", "1 cup = 8 fl oz"),
        (3, "miles", "km", "3 miles = 4.828032 km"),
        (6, "feet", "m", "6 feet = 1.8288 m"),
        (1, "nautical mile", "m", "1 nautical mile = 1852 m"),
        (1, "m3", "l", "1 m3 = 1000 l"),
        (1, "uk gallon", "l", "1 uk gallon = 4.54609 l"),
        (1, "us ton", "kg", "1 us ton = 907.1847 kg"),
        (1, "st", "lb", "1 st = 14 lb"),
        (2, "jin", "kg", "2 jin = 1 kg"),
        (1, "斤", "g", "1 斤 = 500 g"),
        (2, "kilos", "lb", "2 kilos = 4.409245 lb"),
        (2, "wk", "days", "2 wk = 14 days"),
        (3, "hrs", "min", "3 hrs = 180 min"),
        (1, "KM", "m", "1 KM = 1000 m"),
        (25, "摄氏度", "华氏度", "25 摄氏度 = 77 华氏度"),
        (77, "华氏度", "摄氏度", "77 华氏度 = 25 摄氏度"),
        (10, "公里", "英里", "10 公里 = 6.213712 英里"),
        (10, "千克", "磅", "10 千克 = 22.04623 磅"),
        (3, "英尺", "米", "3 英尺 = 0.9144 米"),
    ],
)
def test_convert_units(value, source, target, expected):
    assert tool("convert_units").invoke({"value": value, "from_unit": source, "to_unit": target}) == expected


@pytest.mark.parametrize(
    "args, expected",
    [
        ({"value": "5 km", "from_unit": "mi"}, "5 km = 3.106856 mi"),
        ({"value": "5 km to mi"}, "5 km = 3.106856 mi"),
        ({"value": "5 in to cm"}, "5 in = 12.7 cm"),
        ({"value": "2,340 g in kg"}, "2340 g = 2.34 kg"),
        ({"value": "-40 °C -> °F"}, "-40 °C = -40 °F"),
        ({"value": "60 mph into km/h"}, "60 mph = 96.56064 km/h"),
        ({"value": "1 fl oz to ml"}, "1 fl oz = 29.57353 ml"),
    ],
)
def test_convert_units_reads_units_written_into_the_value(args, expected):
    assert tool("convert_units").invoke(args) == expected


@pytest.mark.parametrize(
    "value, source, target, fragment",
    [
        (1, "kg", "m", "cannot convert kg (mass) to m (length)"),
        (1, "kilogram", "metre", "cannot convert kilogram (mass) to metre (length)"),
        (1, "blorp", "m", "unknown unit 'blorp'"),
        (1, "m", "furlongz", "unknown unit 'furlongz'"),
        (1, "C", "kg", "cannot convert C (temperature) to kg (mass)"),
        (1, "MB", "rad", "cannot convert MB (data size) to rad (radian)"),
        (1, "km/h", "km", "cannot convert km/h (speed) to km (length)"),
        (1, "us ton", "s", "cannot convert us ton (mass) to s (time)"),
        (1, "km h", "m", "unknown unit 'km h'"),
        (1, "a.b", "m", "unknown unit 'a.b'"),
        (1, "m**", "m", "unknown unit 'm**'"),
        (1, "percent", "m", "unknown unit 'percent'"),
        (-300, "C", "K", "below absolute zero"),
        (-500, "°F", "°C", "below absolute zero"),
        ("five", "m", "km", "'five' is not a number"),
        ("5", "", "", "give a value, its unit and the unit to convert to"),
        ([5], "m", "km", "invalid arguments for convert_units"),
    ],
)
def test_convert_units_reports_bad_arguments(value, source, target, fragment):
    result = tool("convert_units").invoke({"value": value, "from_unit": source, "to_unit": target})
    assert result.startswith("Error: ") and fragment in result


# --- knowledge ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query, best_file",
    [
        ("how many days do I have to return a product for a refund?", "returns-and-warranty.md"),
        ("what does error E1 on the kettle mean", "troubleshooting.md"),
        ("who is the CEO of Lumora", "company.md"),
        ("how much does delivery to Canada cost", "shipping.txt"),
        ("price of the Tidal blender", "products.md"),
        ("保修期多久", "faq-zh.md"),
    ],
)
def test_search_knowledge_ranks_the_right_file_first(query, best_file):
    result = knowledge_tool(EXAMPLE_KB).invoke({"query": query})
    assert result.splitlines()[0].startswith(f"[{best_file}]"), result


@pytest.mark.parametrize(
    "query, best_passage",
    [
        ("how many days do I have to return a product for a refund?", "[returns-and-warranty.md] Returns:"),
        ("what does error E1 on the kettle mean", "[troubleshooting.md] Kettle error codes: E1"),
        ("who is the CEO of Lumora", "[company.md] Leadership: Ingrid Solberg"),
        ("how much does delivery to Canada cost", "[shipping.txt] Shipping:"),
        ("price of the Tidal blender", "[products.md] Tidal blender:"),
        ("warranty years", "[returns-and-warranty.md] Warranty:"),
    ],
)
def test_search_knowledge_finds_the_right_english_passage(query, best_passage):
    assert knowledge_tool(EXAMPLE_KB).invoke({"query": query}).startswith(best_passage)


@pytest.mark.parametrize(
    "query, best_passage",
    [
        ("保修期多久", "[faq-zh.md] 保修:"),
        ("保修几年", "[faq-zh.md] 保修:"),
        ("水壶可以保温吗", "[faq-zh.md] 常见问题:"),
        ("退货要多少天", "[faq-zh.md] 退货:"),
        ("退款多久到账", "[faq-zh.md] 退货:"),
        ("客服中心在哪里", "[faq-zh.md] 客服:"),
    ],
)
def test_search_knowledge_finds_the_right_chinese_passage(query, best_passage):
    assert knowledge_tool(EXAMPLE_KB).invoke({"query": query}).startswith(best_passage)


def test_search_knowledge_is_built_from_the_agents_config(monkeypatch):
    factory = tool("search_knowledge")
    monkeypatch.setenv("DUMA_AGENT__KNOWLEDGE_DIR", str(EXAMPLE_KB))  # the agent's config decides, not the environment
    assert "No knowledge base is configured" in factory(DumaConfig()).invoke({"query": "warranty"})
    result = factory(DumaConfig(agent={"knowledge_dir": EXAMPLE_KB})).invoke({"query": "warranty years"})
    assert result.startswith("[returns-and-warranty.md]")


def test_search_knowledge_bad_queries_and_folders(tmp_path):
    assert knowledge_tool(EXAMPLE_KB).invoke({"query": "  "}).startswith("Error: give a search query")
    assert "No passage" in knowledge_tool(EXAMPLE_KB).invoke({"query": "quantum chromodynamics"})
    missing = knowledge_tool(tmp_path / "nope").invoke({"query": "x"})
    assert missing.startswith("Error: ") and "does not exist" in missing
    assert "no .md or .txt files" in knowledge_tool(tmp_path).invoke({"query": "x"})
    assert "No knowledge base" in knowledge_tool(None).invoke({"query": "x"})
    (tmp_path / "links.md").write_text("See [the manual](http://x) for the gizmo.", encoding="utf-8")
    found = knowledge_tool(tmp_path).invoke({"query": "gizmo manual"})
    assert found == "[links.md] See (the manual)(http://x) for the gizmo."  # brackets would end Obs[...]


def test_knowledge_index_is_cached_and_rebuilt_when_files_change(tmp_path):
    from duma.plugins.tools.knowledge import load_index, search_folder

    (tmp_path / "a.md").write_text("# Alpha\n\nThe alpha widget is blue.\n", encoding="utf-8")
    first = load_index(tmp_path)
    assert load_index(tmp_path) is first
    assert "[a.md]" in search_folder(tmp_path, "widget colour blue")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "b.txt").write_text("The beta gadget is green.\n", encoding="utf-8")
    second = load_index(tmp_path)
    assert second is not first
    assert search_folder(tmp_path, "green gadget").startswith("[notes/b.txt]")
    stat = (tmp_path / "a.md").stat()
    (tmp_path / "a.md").write_text("# Alpha\n\nThe alpha widget is red.\n", encoding="utf-8")
    os.utime(tmp_path / "a.md", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10_000_000))
    assert "red" in search_folder(tmp_path, "alpha widget")


def test_bm25_and_tokenizer():
    from duma.plugins.tools.knowledge import build_bm25, split_chunks, tokenize

    assert tokenize("The Kettle's E1 errors") == ["kettle", "e1", "error"]
    assert tokenize("batteries and glass") == ["battery", "glass"]
    assert tokenize("保修三年") == ["保修", "三年"]
    assert tokenize("保修期多久") == ["保修", "保修期"]  # search mode: the long word and its parts
    assert tokenize("Lumora的水壶") == ["lumora", "水壶"]
    assert tokenize("コーヒー") == ["コ", "ー", "ヒ", "ー", "コー", "ーヒ", "ヒー"]
    scores = build_bm25([["apple", "pie"], ["apple", "apple", "tart"], ["banana"]]).get_scores(["apple"])
    assert scores[1] > scores[0] > 0 == scores[2]
    chunks = split_chunks("# Title\n\nFirst paragraph.\n\nSecond one.", "f.md")
    assert [c.text for c in chunks] == ["Title: First paragraph.", "Title: Second one."]


def test_chinese_segmentation_writes_nothing_to_stderr():
    import subprocess
    import sys

    code = "from duma.plugins.tools.knowledge import tokenize; print(tokenize('保修期多久'))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "保修期" in result.stdout
