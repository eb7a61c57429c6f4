"""The pages under their Content-Security-Policy in Chromium, through nginx (a module of
its own: Playwright's sync API and the asyncio tests of test_edge.py do not share one)."""

from playwright.sync_api import expect

from harness.browser import CSP_PROBE


def test_the_room_page_works_under_its_policy_in_chromium(browser, cluster):
    """Tests that Chromium runs the index and room pages' scripts and style and opens the
    room's WebSocket (ws: to the page's host, allowed by connect-src 'self') with no
    violation of the policy, and the chat works."""
    context = browser.new_context()
    context.add_init_script(CSP_PROBE)
    page = context.new_page()
    console = []
    page.on("console", lambda message: console.append(message.text))
    page.goto(f"{cluster.lb_url}/chat/")
    assert page.evaluate("window.__cspViolations") == []
    page.fill("#room-name-input", "csp")
    page.click("#room-name-submit")
    expect(page.locator("#connection-state")).to_have_text("live", timeout=15000)
    page.fill("#chat-message-input", "under a policy")
    page.click("#chat-message-submit")
    expect(page.locator("#chat-log .text")).to_have_text(["under a policy"])
    # The style sheet applied: the room's main part is its flex box.
    assert page.locator(".room-main").evaluate("e => getComputedStyle(e).display") == "flex"
    assert page.evaluate("window.__cspViolations") == []
    assert not [text for text in console if "Content Security Policy" in text], console
    context.close()
