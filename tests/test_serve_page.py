"""The chat page of ``duma serve`` (plugins/serve/page.html) in a real headless Chromium,
against a real ``duma serve`` subprocess with scripted minds (tests/serve_support.py): a
reply streams in word by word, a slow turn shows its thinking block, stop keeps the part
shown, model text renders as text, the API key is asked for and kept, errors show inline."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

try:
    from playwright.sync_api import Browser, Page, Route, expect, sync_playwright
except ImportError:  # pragma: no cover - depends on the environment
    pytest.skip("needs playwright: pip install -e '.[dev]'", allow_module_level=True)

CHROMIUM = shutil.which("chromium")
if CHROMIUM is None:  # pragma: no cover - depends on the environment
    pytest.skip("needs Debian's chromium: apt-get install -y chromium", allow_module_level=True)

from serve_support import start_server  # noqa: E402  (tests/serve_support.py)

PAGE_HTML = Path(__file__).resolve().parents[1] / "plugins" / "serve" / "page.html"
DELAY_S = 0.08  # per scripted word: slow enough to see a reply arrive in parts
TIMEOUT_MS = 15_000

LONG_WORDS = [f"word{i}" for i in range(1, 121)]
XSS_REPLY = ('Here: <script>window.pwned = 1</script> <img src=x onerror="window.pwned = 2"> '
             "and **bold** [a link](javascript:window.pwned=3)")
FAST = [
    "Response[Hello there, this reply streams to the page one word at a time.] Invoke[False]",
    "Response[" + " ".join(LONG_WORDS) + "] Invoke[False]",
    f"Response[{XSS_REPLY}] Invoke[False]",
    # duma/always-slow: the router decides first, so the interim reply ("Let me look into
    # that.") is a fixed text, no fast-mind call; the fast mind writes only the final reply.
    "Response[The answer is **4**.] Invoke[False]",
]
SLOW = ["Reason[I should add the numbers.] Act[calculator(2+2)]", "Finish[2+2 = 4]"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1200, "height": 800})  # fresh localStorage
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def chat_bodies(page: Page) -> list[dict[str, Any]]:
    """The JSON bodies the page posts to v1/chat/completions, as they are sent."""
    bodies: list[dict[str, Any]] = []

    def on_request(request: Any) -> None:
        if request.url.endswith("/v1/chat/completions") and request.method == "POST":
            bodies.append(json.loads(request.post_data or "{}"))

    page.on("request", on_request)
    return bodies


def send(page: Page, text: str) -> None:
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")


def last_reply(page: Page):
    return page.locator(".message.assistant").last


def wait_reply_done(page: Page) -> None:
    expect(page.locator(".message.assistant[data-streaming]")).to_have_count(0)
    expect(page.locator("#send")).to_be_visible()


def test_chat_streams_thinks_stops_and_escapes(tmp_path: Path, page: Page) -> None:
    with start_server(tmp_path, fast=FAST, slow=SLOW, delay_s=DELAY_S) as server:
        bodies = chat_bodies(page)
        page.goto(server.base_url + "/")
        expect(page.locator("#model option[value='duma/always-slow']")).to_have_count(1)
        expect(page.locator("#model")).to_have_value("duma")
        expect(page.locator("#key-form")).to_be_hidden()

        # 1. Shift+Enter is a new line, Enter sends; the reply is visible before it is finished.
        page.fill("#prompt", "Hi")
        page.press("#prompt", "Shift+Enter")
        page.type("#prompt", "there")
        expect(page.locator("#prompt")).to_have_value("Hi\nthere")
        page.press("#prompt", "Enter")
        expect(page.locator("#prompt")).to_have_value("")
        partial = page.wait_for_function(
            """() => {
                const m = [...document.querySelectorAll('.message.assistant')].pop();
                return m && m.dataset.streaming && m.innerText.includes('Hello') ? m.innerText : false;
            }""").json_value()
        assert "one word at a time." not in partial
        expect(page.locator("#stop")).to_be_visible()
        wait_reply_done(page)
        expect(last_reply(page)).to_contain_text("Hello there, this reply streams to the page one word at a time.")
        expect(page.locator(".message.user").first).to_have_text("Hi\nthere")
        assert bodies[0]["model"] == "duma" and bodies[0]["stream"] is True
        assert bodies[0]["messages"] == [{"role": "user", "content": "Hi\nthere"}]
        assert "conversation_id" not in bodies[0].get("duma", {})
        conversation_id = page.evaluate(
            "() => JSON.parse(localStorage.getItem('duma.conversations'))[0].conversationId")
        assert conversation_id

        # 2. A long reply, stopped: the stop button goes away and the part shown stays.
        send(page, "Tell me a long story")
        expect(last_reply(page)).to_contain_text("word3")
        page.click("#stop")
        expect(page.locator("#stop")).to_be_hidden()
        expect(page.locator("#send")).to_be_visible()
        expect(page.locator(".message.assistant[data-streaming]")).to_have_count(0)
        shown = last_reply(page).locator(".body").inner_text()
        assert "word1 word2 word3" in shown and "word120" not in shown
        page.wait_for_timeout(500)
        assert last_reply(page).locator(".body").inner_text() == shown, "the reply went on after stop"
        expect(last_reply(page).locator(".meta")).to_contain_text("stopped")
        # The second turn of a duma conversation sends only the new message, with its id.
        assert bodies[1]["duma"] == {"conversation_id": conversation_id}
        assert bodies[1]["messages"] == [{"role": "user", "content": "Tell me a long story"}]

        # 3. Model text with HTML in it shows as text; javascript: links are not links.
        send(page, "Show me some HTML")
        wait_reply_done(page)
        reply = last_reply(page)
        expect(reply).to_contain_text("<script>window.pwned = 1</script>")
        expect(reply).to_contain_text('<img src=x onerror="window.pwned = 2">')
        expect(reply.locator("strong")).to_have_text("bold")
        assert reply.locator("script, img, a").count() == 0
        assert page.evaluate("() => window.pwned") is None

        # 4. A slow turn in a new conversation: the interim reply, a thinking block with the
        #    slow mind's steps (collapsed until opened), then the final reply.
        page.click("#new-chat")
        expect(page.locator(".message")).to_have_count(0)
        page.select_option("#model", "duma/always-slow")
        send(page, "What is 2+2?")
        thinking = page.locator("details.thinking")
        expect(thinking).to_have_count(1)
        expect(thinking.locator("summary")).to_contain_text("Thinking")
        wait_reply_done(page)
        expect(thinking.locator("summary")).to_contain_text("Thought for")
        assert thinking.get_attribute("open") is None
        expect(thinking.locator(".steps")).to_be_hidden()
        thinking.locator("summary").click()
        expect(thinking.locator(".steps")).to_be_visible()
        expect(thinking.locator(".steps")).to_contain_text("I should add the numbers.")
        expect(thinking.locator(".steps")).to_contain_text("calculator(2+2)")
        reply = last_reply(page)
        expect(reply).to_contain_text("Let me look into that.")
        expect(reply.locator("strong")).to_have_text("4")
        body = reply.locator(".body").inner_text()
        assert body.index("Let me look into that.") < body.index("The answer is")
        assert bodies[-1]["model"] == "duma/always-slow"
        assert bodies[-1]["messages"] == [{"role": "user", "content": "What is 2+2?"}]

        # 5. Both conversations are in the sidebar and survive a reload; switch and delete.
        expect(page.locator("#conversations .conversation")).to_have_count(2)
        page.reload()
        expect(page.locator("#conversations .conversation")).to_have_count(2)
        expect(page.locator("details.thinking[open] .steps")).to_contain_text("calculator(2+2)")
        expect(page.locator("#model")).to_have_value("duma/always-slow")
        page.locator("#conversations .conversation", has_text="Hi").locator(".open").click()
        expect(page.locator("#model")).to_have_value("duma")
        expect(page.locator(".message.assistant")).to_have_count(3)
        expect(page.locator(".message.assistant").nth(1)).to_contain_text("word3")
        other = page.locator("#conversations .conversation", has_text="2+2")
        other.hover()
        other.locator(".delete").click()
        expect(page.locator("#conversations .conversation")).to_have_count(1)


def test_api_key_is_asked_for_kept_and_asked_again_when_wrong(tmp_path: Path, page: Page) -> None:
    fast = ["Response[Key accepted, hello.] Invoke[False]"]
    with start_server(tmp_path, fast=fast, slow=SLOW, args=["--api-key", "sesame-123"]) as server:
        page.goto(server.base_url + "/")
        expect(page.locator("#key-form")).to_be_visible()  # v1/models answered 401
        send(page, "Hello?")
        expect(last_reply(page).locator(".error")).to_contain_text("API key")

        page.fill("#api-key", "wrong-key")
        page.press("#api-key", "Enter")
        expect(page.locator("#key-form")).to_be_visible()
        expect(page.locator("#key-message")).to_contain_text("did not accept")

        page.fill("#api-key", server.api_key)
        page.click("#api-key-save")
        expect(page.locator("#key-form")).to_be_hidden()
        expect(last_reply(page)).to_contain_text("Key accepted, hello.")
        wait_reply_done(page)
        expect(page.locator(".message.assistant")).to_have_count(1)
        expect(page.locator(".message .error")).to_have_count(0)
        expect(page.locator("#model option[value='duma/always-slow']")).to_have_count(1)
        assert page.evaluate("() => JSON.parse(localStorage.getItem('duma.apiKey'))") == server.api_key

        page.reload()  # kept: no question the second time
        send(page, "Again")
        expect(page.locator(".message.assistant")).to_have_count(2)
        wait_reply_done(page)
        expect(page.locator("#key-form")).to_be_hidden()


def test_errors_show_inline_and_narrow_layout(page: Page) -> None:
    """Errors the scripted server cannot produce on demand, from routes in the browser: an
    HTTP error with Retry-After, a stream that fails midway, an unreachable server."""
    replies = [
        {"status": 429, "headers": {"Retry-After": "7", "Content-Type": "application/json"},
         "body": json.dumps({"error": {"message": "Too many requests", "type": "rate_limit_error"}})},
        {"status": 200, "headers": {"Content-Type": "text/event-stream", "X-Duma-Conversation-Id": "c1"},
         "body": "".join("data: " + json.dumps(chunk) + "\n\n" for chunk in [
             {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"role": "assistant"}}]},
             {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "Partial <b>x</b>"}}]},
             {"error": {"message": "the model <crashed>", "type": "server_error"}},
         ])},
    ]

    def chat(route: Route) -> None:
        if not replies:
            route.abort()
            return
        route.fulfill(**replies.pop(0))

    page.route("**/v1/models", lambda route: route.fulfill(json={"object": "list", "data": [{"id": "duma"}]}))
    page.route("**/v1/chat/completions", chat)
    page.route("http://duma.test/", lambda route: route.fulfill(path=str(PAGE_HTML), content_type="text/html"))
    page.goto("http://duma.test/")

    send(page, "one")
    error = last_reply(page).locator(".error")
    expect(error).to_contain_text("429")
    expect(error).to_contain_text("Too many requests")
    expect(error).to_contain_text("7 s")

    error.locator("button.retry").click()  # the same turn again: it fails midway
    expect(page.locator(".message.assistant")).to_have_count(1)
    reply = last_reply(page)
    expect(reply.locator(".error")).to_contain_text("the model <crashed>")
    expect(reply.locator(".body")).to_contain_text("Partial <b>x</b>")
    wait_reply_done(page)

    send(page, "two")
    expect(last_reply(page).locator(".error")).to_contain_text("Could not reach the server")
    wait_reply_done(page)

    page.set_viewport_size({"width": 380, "height": 700})
    expect(page.locator("#sidebar")).not_to_be_in_viewport()
    page.click("#menu")
    expect(page.locator("#sidebar")).to_be_in_viewport()
    page.locator("#conversations .conversation .open").first.click()
    expect(page.locator("#sidebar")).not_to_be_in_viewport()
    width = page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= 380, f"the page scrolls sideways at 380 px ({width} px wide)"
