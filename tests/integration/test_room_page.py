"""The pages as people use them, on phones (360 x 640, 390 x 844) and laptops (900 x 700,
1280 x 800), in Chromium through nginx: no sideways scrolling, the people in reach, two
people chatting both ways by keyboard, names checked as the server checks them, and no
console error or policy violation. Screenshots go to test-results/pages/ (look at them)."""

import secrets

import pytest
from playwright.sync_api import expect

from harness.browser import CSP_PROBE
from harness.paths import ROOT

SHOTS = ROOT / "test-results" / "pages"
VIEWPORTS = {
    "small-phone": {"width": 360, "height": 640},
    "phone": {"width": 390, "height": 844},
    "half-laptop": {"width": 900, "height": 700},
    "laptop": {"width": 1280, "height": 800},
}
LONG_WORD = "x" * 300
SIDEWAYS_SCROLLERS = """
Array.from(document.querySelectorAll('body *'))
    .filter((e) => ['auto', 'scroll'].includes(getComputedStyle(e).overflowX))
    .filter((e) => e.scrollWidth > e.clientWidth)
    .map((e) => e.tagName + '.' + e.className + '#' + e.id)
"""


class Person:
    """A browser context of its own (own storage) at one viewport, collecting every
    console error, page error and policy violation."""

    def __init__(self, browser, viewport):
        self.context = browser.new_context(viewport=viewport)
        self.context.add_init_script(CSP_PROBE)
        self.page = self.context.new_page()
        self.problems = []
        self.page.on(
            "console",
            lambda m: self.problems.append(m.text) if m.type in ("error", "warning") else None,
        )
        self.page.on("pageerror", lambda error: self.problems.append(str(error)))

    def check(self):
        """No sideways scrolling, and nothing went wrong."""
        overflow = self.page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        assert overflow[0] <= overflow[1], f"scrollWidth {overflow[0]} > innerWidth {overflow[1]}"
        # Nor inside the page: no scrolling box (the messages) scrolls sideways.
        sideways = self.page.evaluate(SIDEWAYS_SCROLLERS)
        assert sideways == [], sideways
        assert self.page.evaluate("window.__cspViolations") == []
        assert self.problems == []

    def expect_live(self):
        expect(self.page.locator("#connection-state")).to_have_text("live", timeout=15000)

    def say(self, text):
        """Types and presses Enter, as a person does; the focus stays in the box."""
        box = self.page.locator("#chat-message-input")
        box.fill(text)
        box.press("Enter")
        assert self.page.evaluate("document.activeElement.id") == "chat-message-input"

    def messages(self):
        return self.page.locator("#chat-log .message")

    def shot(self, name):
        SHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=SHOTS / f"{name}.png")


@pytest.fixture(params=list(VIEWPORTS), ids=list(VIEWPORTS))
def viewport(request):
    return request.param


def test_two_people_chat_on_the_room_page(browser, cluster, viewport):
    """Tests the index page's way into a room (Enter), ?name= in a room's address, both
    ways of a chat with sender, time and one's own messages set apart, the people beside
    the log or behind the header's count, and no overflow with long words and names."""
    room = f"layout-{viewport}-{secrets.token_hex(3)}"
    ada, grace = Person(browser, VIEWPORTS[viewport]), Person(browser, VIEWPORTS[viewport])
    ada.page.goto(f"{cluster.lb_url}/chat/")
    ada.check()
    ada.shot(f"index-{viewport}")
    ada.page.fill("#display-name-input", "Ada")
    ada.page.fill("#room-name-input", room)
    ada.page.press("#room-name-input", "Enter")
    ada.expect_live()
    assert ada.page.url.endswith(f"/chat/{room}/?name=Ada")
    grace_name = "Grace " + "Hopper-Long-Name"[:14]
    grace.page.goto(f"{cluster.lb_url}/chat/{room}/?name={grace_name.replace(' ', '%20')}")
    grace.expect_live()
    expect(grace.page.locator("#display-name")).to_have_text(grace_name)

    ada.say("hello from Ada")
    grace.say("hello from Grace " + LONG_WORD)
    for person in (ada, grace):
        expect(person.messages().locator(".text")).to_have_text(
            ["hello from Ada", "hello from Grace " + LONG_WORD]
        )
        expect(person.messages().locator(".sender")).to_have_count(2)
        expect(person.messages().locator("time")).to_have_count(2)
    expect(ada.messages().nth(0)).to_have_class("message own")
    expect(ada.messages().nth(1)).to_have_class("message")
    expect(grace.messages().nth(1)).to_have_class("message own")
    expect(ada.messages().nth(1).locator(".sender")).to_have_text(grace_name)
    assert "Ada: hello from Ada\n" in ada.page.locator("#chat-log").evaluate("log => log.value")
    assert ada.page.locator("#chat-log").get_attribute("aria-live") == "polite"

    people = ada.page.locator("#presence li")
    if viewport.endswith("phone"):
        expect(ada.page.locator("#people")).to_be_hidden()
        toggle = ada.page.locator("#presence-toggle")
        expect(toggle).to_be_visible()
        expect(ada.page.locator("#presence-toggle-count")).to_have_text("2")
        ada.shot(f"room-{viewport}")
        toggle.click()
        expect(ada.page.locator("#people")).to_be_visible()
        ada.page.keyboard.press("Escape")
        expect(ada.page.locator("#people")).to_be_hidden()
        toggle.click()
        expect(toggle).to_have_attribute("aria-expanded", "true")
    else:
        expect(ada.page.locator("#presence-toggle")).to_be_hidden()
    expect(ada.page.locator("#people")).to_be_visible()
    expect(people).to_have_text(["Ada", grace_name])
    ada.shot(f"room-{viewport}-people" if viewport.endswith("phone") else f"room-{viewport}")
    grace.shot(f"room-{viewport}-other")
    for person in (ada, grace):
        person.check()
        person.context.close()


def test_the_index_page_checks_names_as_the_server_does(browser, cluster):
    """Tests that a room name or display name the server would refuse is refused on the
    page with the reason, in place, and a good pair opens the room."""
    person = Person(browser, VIEWPORTS["phone"])
    person.page.goto(f"{cluster.lb_url}/chat/")
    room_error = person.page.locator("#room-name-error")
    name_error = person.page.locator("#display-name-error")

    person.page.click("#room-name-submit")
    expect(room_error).to_contain_text("Type a room name")
    person.page.fill("#room-name-input", "café")
    person.page.fill("#display-name-input", "A" * 33)
    person.page.click("#room-name-submit")
    expect(room_error).to_have_text(
        "A room name is 1 to 80 characters, each an ASCII letter, a digit, '-', '_' or '.'."
    )
    expect(name_error).to_have_text("A name is at most 32 characters; this one has 33.")
    assert person.page.url.endswith("/chat/")
    person.page.fill("#display-name-input", "Ada\u200b")
    person.page.click("#room-name-submit")
    expect(name_error).to_contain_text("invisible control characters")
    person.shot("index-phone-refused")

    person.page.fill("#room-name-input", "cafe")
    expect(room_error).to_be_hidden()
    person.page.fill("#display-name-input", "  Ada Lovelace  ")
    expect(name_error).to_be_hidden()
    person.page.click("#room-name-submit")
    person.expect_live()
    assert person.page.url.endswith("/chat/cafe/?name=Ada%20Lovelace")
    expect(person.page.locator("#display-name")).to_have_text("Ada Lovelace")
    person.check()
    person.context.close()


def test_a_name_the_server_refuses_in_the_address_is_not_used(browser, cluster):
    """Tests that a ?name= the server would refuse is not used: the stored name stays and a
    notice says why."""
    person = Person(browser, VIEWPORTS["laptop"])
    person.context.add_init_script("localStorage.setItem('chat-display-name', 'Ada')")
    person.page.goto(f"{cluster.lb_url}/chat/lobby/?name={'B' * 40}")
    person.expect_live()
    expect(person.page.locator("#display-name")).to_have_text("Ada")
    expect(person.page.locator("#chat-notice")).to_contain_text("at most 32 characters")
    person.check()
    person.context.close()
