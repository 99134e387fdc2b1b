"""Template families for the minds' training data.

Each family has several phrasings per language; a template id is ``family/lang<index>``. The
last phrasing of each (family, language) with at least two phrasings is held out: it appears
only in the eval split, so the figures measure generalisation to unseen wordings.

Slow families are functions ``(rng, phrasing, run_tool, lang) -> SlowTask``: they draw
numbers/dates, run the real tools through ``run_tool(action) -> observation`` and build the
trace from the real outputs. No torch or langchain here (the tools are reached only through
``run_tool``).
"""

from __future__ import annotations

import datetime as dt
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field

# Runs one action (``calculator(2 + 2)``) as the slow mind would and returns the observation.
RunTool = Callable[[str], str]


@dataclass
class Step:
    reason: str
    action: str
    observation: str = ""


@dataclass
class SlowTask:
    """One slow-mind episode: the query, the tool steps (with real observations), the final
    reason and answer, and the substring a correct answer must contain."""

    query: str
    steps: list[Step]
    finish_reason: str
    answer: str
    expected: str
    lang: str = "en"


@dataclass
class Family:
    name: str
    phrasings: dict[str, list[str]]  # lang -> phrasings
    build: Callable[[random.Random, str, RunTool, str], SlowTask] | None = None  # slow families only
    responses: dict[str, list[str]] = field(default_factory=dict)  # chat families only


def held_out(family: Family, lang: str, index: int) -> bool:
    """Whether phrasing ``index`` of ``family`` in ``lang`` is eval-only."""
    n = len(family.phrasings.get(lang, []))
    return n >= 2 and index == n - 1


def template_id(family: Family, lang: str, index: int) -> str:
    return f"{family.name}/{lang}{index}"


# --------------------------------------------------------------------------- helpers

def _first_number(text: str) -> str:
    """The first number in a tool output (for follow-up calculations)."""
    m = re.search(r"-?\d[\d,]*(?:\.\d+)?", text)
    return m.group(0).replace(",", "") if m else text


def _converted_value(text: str) -> str:
    """The converted value in a convert_units output (``5 km = 3.10686 mi`` -> ``3.10686``)."""
    return _first_number(text.split("=")[-1])


def _random_date(rng: random.Random, start_year: int = 2024, end_year: int = 2026) -> dt.date:
    first = dt.date(start_year, 1, 1)
    span = (dt.date(end_year, 12, 31) - first).days
    return first + dt.timedelta(days=rng.randrange(span))


def _iso_date(d: dt.date) -> str:
    return d.isoformat()


def _english_date(d: dt.date) -> str:
    return f"{d.strftime('%B')} {d.day}, {d.year}"


def _chinese_date(d: dt.date) -> str:
    return f"{d.year}年{d.month}月{d.day}日"


def _tool_step(run_tool: RunTool, reason: str, action: str) -> Step:
    """A step with its real observation: the tool output of running ``action``."""
    return Step(reason, action, run_tool(action))


# --------------------------------------------------------------------------- slow families

def _percent(rng: random.Random, phrasing: str, run_tool: RunTool, lang: str) -> SlowTask:
    p = rng.choice([5, 8, 10, 12, 15, 17, 20, 25, 30, 35, 40, 45, 60, 75])
    n = rng.choice([rng.randrange(20, 999), rng.randrange(1000, 20000), rng.randrange(100, 5000) / 10])
    action = f"calculator({p}% of {n:g})"
    steps = [_tool_step(run_tool, "I need to compute the percentage." if lang == "en" else "需要计算百分比。", action)]
    obs = steps[0].observation
    answer = f"{p}% of {n:g} is {obs}." if lang == "en" else f"{n:g}的{p}%是{obs}。"
    return SlowTask(phrasing.format(p=p, n=f"{n:g}"), steps, "I have the result." if lang == "en" else "已得到结果。",
                    answer, obs, lang)


def _arithmetic(rng: random.Random, phrasing: str, run_tool: RunTool, lang: str) -> SlowTask:
    a, b, c = rng.randrange(3, 99), rng.randrange(3, 99), rng.randrange(10, 999)
    steps = [_tool_step(run_tool, "Let me calculate it." if lang == "en" else "我来计算。", f"calculator({a} * {b} + {c})")]
    obs = steps[0].observation
    answer = f"{a} × {b} + {c} = {obs}." if lang == "en" else f"{a}乘以{b}再加{c}等于{obs}。"
    return SlowTask(phrasing.format(a=a, b=b, c=c), steps, "Done." if lang == "en" else "完成。", answer, obs, lang)


def _split_bill(rng: random.Random, phrasing: str, run_tool: RunTool, lang: str) -> SlowTask:
    total, people = rng.randrange(40, 900), rng.randrange(2, 9)
    steps = [_tool_step(run_tool, "Divide the total by the number of people." if lang == "en" else "总额除以人数。",
                        f"calculator(round({total} / {people}, 2))")]
    obs = steps[0].observation
    answer = (f"Each person pays {obs} euros." if lang == "en" else f"每人需付{obs}欧元。")
    return SlowTask(phrasing.format(total=total, people=people), steps,
                    "I have the share per person." if lang == "en" else "已算出每人的份额。", answer, obs, lang)


def _date_diff(rng: random.Random, phrasing: str, run_tool: RunTool, lang: str) -> SlowTask:
    d1 = _random_date(rng)
    d2 = d1 + dt.timedelta(days=rng.randrange(3, 500))
    steps = [_tool_step(run_tool, "Count the days between the two dates." if lang == "en" else "计算两个日期之间的天数。",
                        f"date_diff({_iso_date(d1)}, {_iso_date(d2)})")]
    obs = steps[0].observation
    answer = (f"There are {obs} days from {_iso_date(d1)} to {_iso_date(d2)}." if lang == "en"
              else f"从{_chinese_date(d1)}到{_chinese_date(d2)}共{obs}天。")
    show = _english_date if lang == "en" else _chinese_date
    return SlowTask(phrasing.format(d1=show(d1), d2=show(d2)), steps, "Done." if lang == "en" else "完成。",
                    answer, obs, lang)


def _days_until(rng: random.Random, phrasing: str, run_tool: RunTool, lang: str) -> SlowTask:
    """Two steps: today(), then date_diff from today."""
    today_step = _tool_step(run_tool, "I need today's date first.", "today()")
    today = dt.date.fromisoformat(today_step.observation.strip()[:10])
    target = today + dt.timedelta(days=rng.randrange(2, 300))
    diff = _tool_step(run_tool, "Now count the days from today.", f"date_diff({_iso_date(today)}, {_iso_date(target)})")
    answer = f"{_english_date(target)} is {diff.observation} days away (today is {_iso_date(today)})."
    return SlowTask(phrasing.format(d=_english_date(target)), [today_step, diff], "I have the count.",
                    answer, diff.observation)


def _weekday(rng: random.Random, phrasing: str, run_tool: RunTool, lang: str) -> SlowTask:
    d = _random_date(rng)
    steps = [_tool_step(run_tool, "Look up the weekday." if lang == "en" else "查询星期几。", f"weekday({_iso_date(d)})")]
    obs = steps[0].observation
    answer = f"{_english_date(d)} is a {obs}." if lang == "en" else f"{_chinese_date(d)}是{obs}。"
    show = _english_date if lang == "en" else _chinese_date
    return SlowTask(phrasing.format(d=show(d)), steps, "Found it." if lang == "en" else "找到了。", answer, obs, lang)


def _add_days(rng: random.Random, phrasing: str, run_tool: RunTool, lang: str) -> SlowTask:
    d, n = _random_date(rng), rng.randrange(5, 200)
    steps = [_tool_step(run_tool, "Add the days to the date.", f"add_days({_iso_date(d)}, {n})")]
    obs = steps[0].observation
    return SlowTask(phrasing.format(d=_english_date(d), n=n), steps, "I have the date.",
                    f"{n} days after {_iso_date(d)} is {obs}.", obs)


_CONVERSIONS = [("km", "mi", "kilometres", "miles"), ("mi", "km", "miles", "kilometres"),
                ("kg", "lb", "kilograms", "pounds"), ("lb", "kg", "pounds", "kilograms"),
                ("C", "F", "degrees Celsius", "degrees Fahrenheit"), ("F", "C", "degrees Fahrenheit", "degrees Celsius"),
                ("l", "gal", "litres", "US gallons"), ("m", "ft", "metres", "feet"), ("in", "cm", "inches", "centimetres")]


def _convert(rng: random.Random, phrasing: str, run_tool: RunTool, lang: str) -> SlowTask:
    src, dst, src_name, dst_name = rng.choice(_CONVERSIONS)
    v = rng.choice([rng.randrange(1, 200), rng.randrange(10, 999) / 10])
    steps = [_tool_step(run_tool, "Convert the units." if lang == "en" else "进行单位换算。",
                        f"convert_units({v:g}, {src}, {dst})")]
    obs = steps[0].observation
    answer = f"{obs} ({v:g} {src_name} in {dst_name})." if lang == "en" else f"{obs}。"
    return SlowTask(phrasing.format(v=f"{v:g}", src=src_name, dst=dst_name), steps,
                    "Converted." if lang == "en" else "换算完成。", answer, _converted_value(obs), lang)


def _convert_then_calc(rng: random.Random, phrasing: str, run_tool: RunTool, lang: str) -> SlowTask:
    v, days = rng.randrange(2, 25), rng.choice([5, 7, 10, 14, 30])
    first = _tool_step(run_tool, "Convert the daily distance to miles first.", f"convert_units({v}, km, mi)")
    miles = _converted_value(first.observation)
    second = _tool_step(run_tool, f"Now multiply by {days} days.", f"calculator(round({miles} * {days}, 2))")
    answer = f"{v} km a day is {miles} miles; over {days} days that is {second.observation} miles."
    return SlowTask(phrasing.format(v=v, days=days), [first, second], "I have the total.", answer,
                    second.observation)


def _weeks_between(rng: random.Random, phrasing: str, run_tool: RunTool, lang: str) -> SlowTask:
    d1 = _random_date(rng)
    d2 = d1 + dt.timedelta(days=rng.randrange(14, 400))
    first = _tool_step(run_tool, "Count the days first.", f"date_diff({_iso_date(d1)}, {_iso_date(d2)})")
    second = _tool_step(run_tool, "Divide the days by 7.",
                        f"calculator(round({_first_number(first.observation)} / 7, 1))")
    answer = f"That is {first.observation} days, about {second.observation} weeks."
    return SlowTask(phrasing.format(d1=_english_date(d1), d2=_english_date(d2)), [first, second],
                    "I have the number of weeks.", answer, second.observation)


# Knowledge questions: (query for the tool, fact that must appear in the observation, answer).
_FACTS_EN = [
    ("return policy days", "30 days", "Products can be returned within 30 days of delivery for a full refund."),
    ("AeroBrew kettle price", "129 euros", "The AeroBrew kettle costs 129 euros."),
    ("Solstice toaster price", "79 euros", "The Solstice toaster costs 79 euros."),
    ("Tidal blender price", "149 euros", "The Tidal blender costs 149 euros."),
    ("express delivery cost", "12 euros", "Express delivery takes 1 working day and costs 12 euros."),
    ("standard delivery time", "2 to 4 working days", "Standard delivery takes 2 to 4 working days in the EU."),
    ("AeroBrew kettle capacity litres", "1.7 litre", "The AeroBrew holds 1.7 litres."),
    ("Tidal blender motor power", "1200 W", "The Tidal blender has a 1200 W motor."),
]
_FACT_PHRASES_EN = {
    "return policy days": "how many days do I have to return a product",
    "AeroBrew kettle price": "how much does the AeroBrew kettle cost",
    "Solstice toaster price": "what is the price of the Solstice toaster",
    "Tidal blender price": "how much is the Tidal blender",
    "express delivery cost": "what does express delivery cost",
    "standard delivery time": "how long does standard delivery take",
    "AeroBrew kettle capacity litres": "how much water does the AeroBrew hold",
    "Tidal blender motor power": "how powerful is the Tidal blender's motor",
}
_FACTS_ZH = [
    ("退货 天", "30 天", "收货后 30 天内可以无理由退货。", "退货期限是多久"),
    ("保修", "三年", "所有产品保修三年，注册后延长到五年。", "产品保修多久"),
    ("客服 工作时间", "周一至周五", "客服工作时间为周一至周五早上八点到晚上六点。", "客服什么时候上班"),
]


def _knowledge(rng: random.Random, phrasing: str, run_tool: RunTool, lang: str) -> SlowTask:
    if lang == "zh":
        query, fact, answer, topic = rng.choice(_FACTS_ZH)
        steps = [_tool_step(run_tool, "在知识库中查找。", f"search_knowledge({query})")]
        if fact not in steps[0].observation:
            raise AssertionError(f"knowledge search for {query!r} lost the fact {fact!r}")
        return SlowTask(phrasing.format(topic=topic), steps, "找到了答案。", answer, fact, lang)
    query, fact, answer = rng.choice(_FACTS_EN)
    steps = [_tool_step(run_tool, "Search the knowledge base.", f"search_knowledge({query})")]
    if fact not in steps[0].observation:
        raise AssertionError(f"knowledge search for {query!r} lost the fact {fact!r}")
    return SlowTask(phrasing.format(topic=_FACT_PHRASES_EN[query]), steps, "The knowledge base answers it.",
                    answer, fact, lang)


_PRICED = [("AeroBrew kettle price", "AeroBrew kettles", 129), ("Solstice toaster price", "Solstice toasters", 79),
           ("Tidal blender price", "Tidal blenders", 149)]


def _knowledge_then_calc(rng: random.Random, phrasing: str, run_tool: RunTool, lang: str) -> SlowTask:
    query, product, _ = rng.choice(_PRICED)
    k = rng.randrange(2, 7)
    first = _tool_step(run_tool, "Find the unit price first.", f"search_knowledge({query})")
    price = re.search(r"Price: (\d+) euros", first.observation)
    if price is None:
        raise AssertionError(f"no price for {query!r} in {first.observation!r}")
    second = _tool_step(run_tool, f"Multiply the price by {k}.", f"calculator({price.group(1)} * {k})")
    answer = f"{k} {product} cost {second.observation} euros ({price.group(1)} euros each)."
    return SlowTask(phrasing.format(k=k, product=product), [first, second], "I have the total.", answer,
                    second.observation)


def _recover_units(rng: random.Random, phrasing: str, run_tool: RunTool, lang: str) -> SlowTask:
    """Error recovery: a unit name the tool does not know, then the right abbreviation."""
    v = rng.randrange(2, 120)
    bad = _tool_step(run_tool, "Convert the distance.", f"convert_units({v}, kilometers-per-day, miles)")
    if not bad.observation.startswith("Error"):
        raise AssertionError(f"expected an error from {bad.action!r}, got {bad.observation!r}")
    good = _tool_step(run_tool, "That unit name was wrong; use the plain unit km.", f"convert_units({v}, km, mi)")
    return SlowTask(phrasing.format(v=v), [bad, good], "The second call worked.",
                    f"{good.observation}.", _converted_value(good.observation))


def _recover_calc(rng: random.Random, phrasing: str, run_tool: RunTool, lang: str) -> SlowTask:
    """Error recovery: words in the expression, then the bare arithmetic."""
    a, b = rng.randrange(12, 500), rng.randrange(2, 40)
    bad = _tool_step(run_tool, "Compute the product.", f"calculator({a} apples times {b})")
    if not bad.observation.startswith("Error"):
        raise AssertionError(f"expected an error from {bad.action!r}, got {bad.observation!r}")
    good = _tool_step(run_tool, "The calculator only takes numbers and operators.", f"calculator({a} * {b})")
    return SlowTask(phrasing.format(a=a, b=b), [bad, good], "Fixed the expression.",
                    f"{a} × {b} = {good.observation}.", good.observation)


SLOW_FAMILIES: list[Family] = [
    Family("percent", {"en": ["What is {p}% of {n}?", "Calculate {p} percent of {n}.",
                              "How much is {p}% of {n}?", "What's {p} per cent of {n}?",
                              "Find {p}% of {n}, please.", "I need {p}% of {n}.", "{p}% of {n} is how much?",
                              "If I take {p}% off {n}, how much is the discount?"],
                       "zh": ["{n}的{p}%是多少？", "{n}乘以{p}%等于多少？", "帮我算一下{n}的百分之{p}。"]}, _percent),
    Family("arith", {"en": ["What is {a} times {b} plus {c}?", "Compute {a} * {b} + {c}.",
                            "Calculate {a} times {b}, plus {c}.", "What do I get for {a} x {b} + {c}?",
                            "Multiply {a} by {b} and add {c}.", "{a} * {b} + {c} = ?",
                            "Can you work out {a} multiplied by {b}, then add {c}?"],
                     "zh": ["{a}乘以{b}再加{c}等于多少？", "{a}×{b}+{c}是多少？", "算一下{a}乘{b}加{c}。"]}, _arithmetic),
    Family("split_bill", {"en": ["The bill is {total} euros for {people} people. How much does each pay?",
                                 "We spent {total} euros and there are {people} of us; what's each share?",
                                 "Dinner was {total} euros for {people}. What does each of us owe?",
                                 "Divide a {total} euro bill among {people} people.",
                                 "{people} people share a {total} euro bill; how much per person?",
                                 "Split {total} euros evenly between {people} friends."],
                          "zh": ["账单{total}欧元，{people}个人平分，每人多少？", "{total}欧元由{people}人平摊，每人多少钱？", "{people}个人一共花了{total}欧元，每人付多少？"]},
           _split_bill),
    Family("date_diff", {"en": ["How many days are there between {d1} and {d2}?",
                                "How many days from {d1} to {d2}?",
                                "What is the number of days between {d1} and {d2}?",
                                "How long is it from {d1} to {d2}, in days?",
                                "Days from {d1} to {d2}?",
                                "Count the days from {d1} until {d2}."],
                         "zh": ["{d1}到{d2}之间有多少天？", "{d1}和{d2}相差几天？", "从{d1}到{d2}一共几天？"]}, _date_diff),
    Family("days_until", {"en": ["How many days until {d}?", "How long is it from today to {d}, in days?",
                                 "How many days are left until {d}?", "How far away is {d}, in days?",
                                 "Count the days from today to {d}.", "{d} is how many days from now?",
                                 "Days left before {d}?"]}, _days_until),
    Family("weekday", {"en": ["What day of the week is {d}?", "Which weekday falls on {d}?",
                              "What weekday is {d}?", "On what day of the week does {d} fall?",
                              "Tell me the weekday of {d}.", "Is {d} a Monday? Which day is it?",
                              "Is {d} a weekend? What day is it?"],
                       "zh": ["{d}是星期几？", "{d}是礼拜几？", "请问{d}是周几？"]}, _weekday),
    Family("add_days", {"en": ["What date is {n} days after {d}?", "Add {n} days to {d}.",
                               "Which date is {n} days from {d}?", "What's the date {n} days past {d}?",
                               "{d} plus {n} days is which date?", "Counting {n} days on from {d}, where do I land?",
                               "If I start on {d}, what is the date {n} days later?"]}, _add_days),
    Family("convert", {"en": ["How many {dst} is {v} {src}?", "Convert {v} {src} to {dst}.",
                              "What is {v} {src} in {dst}?", "Change {v} {src} into {dst}.",
                              "Please express {v} {src} in {dst}.", "{v} {src} equals how many {dst}?",
                              "I have {v} {src}; how much is that in {dst}?"],
                       "zh": ["{v} {src}等于多少{dst}？", "{v} {src}是多少{dst}？", "把{v} {src}换算成{dst}。"]}, _convert),
    Family("convert_calc", {"en": ["I run {v} km a day. How many miles is that in {days} days?",
                                   "If I cycle {v} kilometres daily, how many miles do I cover in {days} days?",
                                   "Walking {v} km every day for {days} days, how many miles is that?",
                                   "My daily ride is {v} km. Total miles after {days} days?",
                                   "How many miles do I run in {days} days at {v} km a day?",
                                   "{v} km per day for {days} days: how many miles in total?"]}, _convert_then_calc),
    Family("weeks_between", {"en": ["How many weeks are there between {d1} and {d2}?",
                                    "Roughly how many weeks from {d1} to {d2}?",
                                    "How many weeks lie between {d1} and {d2}?",
                                    "From {d1} to {d2}, how many weeks is that?",
                                    "Weeks between {d1} and {d2}?",
                                    "Convert the time from {d1} to {d2} into weeks."]}, _weeks_between),
    Family("knowledge", {"en": ["Lumora question: {topic}?", "Can you check {topic}?",
                                "Please look up {topic}.", "Do you know {topic}?",
                                "Search the docs: {topic}?", "Tell me {topic}.", "I'd like to know {topic}."],
                         "zh": ["请问Lumora的{topic}？", "我想知道{topic}。", "帮我查一下{topic}。"]}, _knowledge),
    Family("knowledge_calc", {"en": ["How much would {k} {product} cost in total?",
                                     "What's the total price for {k} {product}?",
                                     "How much do {k} {product} cost altogether?",
                                     "Price for {k} {product}, please.",
                                     "If I order {k} {product}, what's the bill?",
                                     "I want to buy {k} {product}. What will I pay?"]}, _knowledge_then_calc),
    Family("recover_units", {"en": ["How many miles is {v} kilometers?", "Convert {v} kilometers into miles.",
                                    "What is {v} kilometers in miles?", "How far is {v} kilometers in miles?",
                                    "{v} kilometers in miles, please."]}, _recover_units),
    Family("recover_calc", {"en": ["I have {a} boxes with {b} apples each. How many apples?",
                                   "{a} crates, {b} apples per crate: total apples?",
                                   "There are {a} baskets of {b} apples. How many apples in all?",
                                   "{a} trays hold {b} apples each; how many apples is that?",
                                   "Count the apples: {a} bags of {b}."]}, _recover_calc),
]


# --------------------------------------------------------------------------- fast-mind chat

CHAT_FAMILIES: list[Family] = [
    Family("greet", {"en": ["Hi!", "Hello there.", "Good morning!", "Hey, how are you?"],
                     "zh": ["你好！", "早上好！"]},
           responses={"en": ["Hello! How can I help you today?", "Hi! What can I do for you?"],
                      "zh": ["你好！有什么可以帮你的吗？"]}),
    Family("thanks", {"en": ["Thanks!", "Thank you, that helps.", "Great, thanks a lot.", "Perfect, cheers."],
                      "zh": ["谢谢！", "太好了，谢谢你。"]},
           responses={"en": ["You're welcome!", "Glad I could help.", "Any time!"],
                      "zh": ["不客气！", "很高兴能帮到你。"]}),
    Family("bye", {"en": ["Bye!", "That's all, goodbye.", "See you later."], "zh": ["再见！", "好的，拜拜。"]},
           responses={"en": ["Goodbye! Have a nice day.", "Bye, take care!"], "zh": ["再见，祝你愉快！"]}),
    Family("smalltalk", {"en": ["What's your name?", "Who are you?", "What can you do?",
                                "Are you a robot?"], "zh": ["你是谁？", "你能做什么？"]},
           responses={"en": ["I'm an assistant: I can chat, calculate, work with dates and look things up."],
                      "zh": ["我是一个助手，可以聊天、计算、处理日期和查找资料。"]}),
]

# Simple questions the model answers itself: (question, answer, key a correct answer contains).
SIMPLE_QA: dict[str, list[tuple[str, str, str]]] = {
    "en": [("What is the capital of France?", "The capital of France is Paris.", "Paris"),
           ("What colour is the sky on a clear day?", "It is blue.", "blue"),
           ("How many days are in a week?", "A week has seven days.", "seven"),
           ("What is 2 plus 2?", "2 plus 2 is 4.", "4"),
           ("What language is spoken in Spain?", "Spanish is spoken in Spain.", "Spanish"),
           ("How many legs does a spider have?", "A spider has eight legs.", "eight"),
           ("What is the opposite of hot?", "The opposite of hot is cold.", "cold"),
           ("Which planet do we live on?", "We live on Earth.", "Earth")],
    "zh": [("中国的首都是哪里？", "中国的首都是北京。", "北京"), ("一年有几个月？", "一年有十二个月。", "十二"),
           ("一加一等于几？", "一加一等于二。", "二")],
}
# Held out: the last two English and last Chinese questions.
SIMPLE_QA_HELD = {"en": 2, "zh": 1}

INTERIMS = {"en": ["Let me look into that.", "One moment, I'll check.", "Let me work that out.",
                   "Hold on, I'll calculate it.", "Give me a second to look it up."],
            "zh": ["请稍等，我查一下。", "稍等，我来算一下。"]}
# Held out: the last interim of each language is used only in eval dialogues.

FINAL_REPLIES = {"en": ["{answer}", "Here you go: {answer}", "I checked: {answer}"],
                 "zh": ["{answer}", "查到了：{answer}"]}

FOLLOWUPS = {"en": ["Sorry, what was the answer again?", "Can you repeat that?",
                    "So what did you find?", "Say that once more, please."],
             "zh": ["能再说一遍吗？", "刚才的结果是多少？"]}
FOLLOWUP_REPLIES = {"en": ["As I said: {answer}", "Sure: {answer}", "{answer}"],
                    "zh": ["好的：{answer}", "{answer}"]}
