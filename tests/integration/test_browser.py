"""The chat as people use it: real Chromium pages (Debian's chromium, driven by
Playwright) through nginx, on clusters of their own, since tests kill replicas and
restart Redis."""

import os
import signal
import time

from playwright.sync_api import expect

from chat.protocol import CLOSE_SERVICE_RESTART
from harness.browser import SCREENSHOTS, ChatPage, SocketSwitch, pages_on_two_replicas, side_by_side


def test_two_pages_on_different_replicas_chat_and_other_rooms_see_nothing(browser, browser_cluster):
    """Tests the tutorial's part-4 scenarios on two replicas, with presence on both."""
    ada, grace = pages_on_two_replicas(browser, browser_cluster, "lobby")
    elsewhere = ChatPage(browser, browser_cluster, "elsewhere", "Linus")

    ada.post("hello from Ada")
    ada.expect_in_log("Ada: hello from Ada")
    grace.expect_in_log("Ada: hello from Ada")
    grace.post("hello from Grace")
    ada.expect_in_log("Grace: hello from Grace")
    expect(ada.page.locator("#presence li")).to_have_text(["Ada", "Grace"])
    expect(grace.page.locator("#presence li")).to_have_text(["Ada", "Grace"])

    time.sleep(0.5)
    assert elsewhere.log() == ""
    assert elsewhere.presence() == ["Linus"]
    side_by_side([ada, grace], SCREENSHOTS / "two-pages.png")
    for page in (ada, grace, elsewhere):
        page.close()


def test_presence_drops_a_closed_page(browser, browser_cluster):
    """Tests that a page's name leaves the other page's presence list when it closes."""
    ada, grace = pages_on_two_replicas(browser, browser_cluster, "presence")
    expect(ada.page.locator("#presence li")).to_have_text(["Ada", "Grace"])
    grace.close()
    expect(ada.page.locator("#presence li")).to_have_text(["Ada"])
    ada.close()


def test_markup_is_shown_as_text(browser, browser_cluster):
    """Tests that a message and a name made of HTML are shown literally, never run."""
    attack = '<img src=x onerror="window.__owned = 1">'
    ada = ChatPage(browser, browser_cluster, "xss", '<b onmouseover="x">Ada</b>')
    ada.post(attack)
    ada.expect_in_log(attack)
    expect(ada.page.locator("#presence li")).to_have_text(['<b onmouseover="x">Ada</b>'])
    assert ada.page.evaluate("window.__owned") is None
    assert ada.page.locator("#chat-log img, #presence b").count() == 0
    ada.close()


def test_killed_replica_costs_a_visible_reconnect_and_nothing_typed(browser, browser_cluster):
    """Tests that killing the replica behind a page shows it reconnecting, brings it back,
    keeps what the person typed, and chat goes on both ways."""
    ada, grace = pages_on_two_replicas(browser, browser_cluster, "failover")
    victim = browser_cluster.process_pids()[ada.replica]
    ada.page.fill("#chat-message-input", "typed before the crash")
    os.kill(victim, signal.SIGKILL)

    expect(ada.page.locator("#connection-state")).to_contain_text("reconnecting", timeout=5000)
    started = time.monotonic()
    ada.wait_live(timeout=20000)
    reconnect_seconds = time.monotonic() - started
    print(f"reconnected after {reconnect_seconds:.1f} s, now on {ada.replica}")
    assert ada.page.locator("#chat-message-input").input_value() == "typed before the crash"

    ada.page.click("#chat-message-submit")
    grace.expect_in_log("Ada: typed before the crash")
    grace.post("welcome back")
    ada.expect_in_log("Grace: welcome back")
    assert reconnect_seconds < 15
    # The killed replica's entry for Ada is a ghost until CHAT_PRESENCE_TTL (3 s here)
    # and a sweep have passed; then each name is listed once.
    expect(grace.page.locator("#presence li")).to_have_text(["Ada", "Grace"], timeout=10000)
    expect(ada.page.locator("#presence li")).to_have_text(["Ada", "Grace"], timeout=10000)
    for page in (ada, grace):
        page.close()


def test_the_outbox_sends_until_acknowledged_and_never_twice(browser, browser_cluster):
    """Tests that a message refused as unavailable is sent again with its ref, that one
    sent while disconnected waits in the outbox, and that one whose ack was lost is sent
    again on reconnecting and shown once (the server acknowledges the ref as a duplicate)."""
    switch = SocketSwitch()
    ada = ChatPage(browser, browser_cluster, "outbox", "Ada", route_sockets=switch)
    pending = ada.page.locator("#chat-pending .text")

    switch.refuse_next = "unavailable"
    ada.post("refused once")
    expect(ada.page.locator("#chat-error")).to_contain_text("Retrying")
    ada.expect_in_log("Ada: refused once\n")
    expect(pending).to_have_count(0)
    refs = [frame["ref"] for frame in switch.sent]
    assert refs == [refs[0], refs[0]], "the retry did not reuse the ref"

    switch.cut_off()
    expect(ada.page.locator("#connection-state")).to_contain_text("reconnecting")
    ada.post("typed while cut off")
    expect(pending).to_have_text(["typed while cut off"])
    assert ada.page.locator("#chat-message-input").input_value() == ""
    switch.restore()
    ada.wait_live()
    ada.expect_in_log("Ada: typed while cut off\n")
    expect(pending).to_have_count(0)

    switch.drop_acks = True
    ada.post("ack lost")
    ada.expect_in_log("Ada: ack lost\n")
    expect(pending).to_have_text(["ack lost"])
    switch.drop_acks = False
    switch.current.close(code=CLOSE_SERVICE_RESTART, reason="restart")
    expect(pending).to_have_count(0)
    refs = [frame["ref"] for frame in switch.sent if frame["message"] == "ack lost"]
    assert refs == [refs[0], refs[0]], "not sent again with its ref on reconnecting"
    assert [ack["duplicate"] for ack in switch.acks if ack["ref"] == refs[0]] == [False, True]
    time.sleep(0.5)
    assert ada.lines() == ["Ada: refused once", "Ada: typed while cut off", "Ada: ack lost"]
    ada.assert_not_reloaded()
    ada.close()
