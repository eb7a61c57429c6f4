"""Recovery as people see it: real Chromium pages keep a complete log through a
replica kill, a Redis restart, a rolling restart and a gap in the history."""

import os
import re
import signal
import time

from playwright.sync_api import expect

from chat.protocol import CLOSE_SERVICE_RESTART
from harness.browser import (
    ChatPage,
    Sender,
    SocketSwitch,
    catch_up,
    finished,
    in_background,
    say_many,
)


def test_a_gap_in_the_history_is_shown_and_none_is_not(browser, browser_cluster):
    """Tests that a page that resumes after missing more than the room's history keeps
    (5 messages here) shows the newest, once each, and a notice; a resume without a gap
    shows no notice."""
    switch = SocketSwitch()
    ada = ChatPage(browser, browser_cluster, "gaps", "Ada", route_sockets=switch)
    ada.post("before")
    ada.expect_in_log("Ada: before")

    # Missing 2 messages: replayed, no notice.
    switch.cut_off()
    expect(ada.page.locator("#connection-state")).to_contain_text("reconnecting")
    say_many(browser_cluster, "gaps", ["missed-1", "missed-2"])
    switch.restore()
    ada.wait_live()
    ada.expect_in_log("Bot: missed-2")
    assert ada.lines() == ["Ada: before", "Bot: missed-1", "Bot: missed-2"]
    assert ada.notice() == ""

    # Missing 8: the oldest 3 are no longer kept.
    switch.cut_off()
    expect(ada.page.locator("#connection-state")).to_contain_text("reconnecting")
    say_many(browser_cluster, "gaps", [f"lost-{n}" for n in range(1, 9)])
    switch.restore()
    ada.wait_live()
    ada.expect_in_log("Bot: lost-8")
    expect(ada.page.locator("#chat-notice")).to_contain_text("may be missing")
    assert ada.lines() == ["Ada: before", "Bot: missed-1", "Bot: missed-2"] + [
        f"Bot: lost-{n}" for n in range(4, 9)
    ]
    ada.assert_not_reloaded()
    ada.close()


def test_a_page_keeps_a_complete_log_through_faults_without_reloading(browser, faults_cluster):
    """Tests that a page shows every message a steady sender got acknowledged, once each
    and in order, and delivers its own, through (a) a SIGKILL of its replica, (b) a
    Redis restart that loses every key and (c) a rolling restart of all replicas, with
    no reload."""
    cluster = faults_cluster
    started = time.monotonic()
    ada = ChatPage(browser, cluster, "faults", "Ada")
    state = ada.page.locator("#connection-state")
    sender = Sender(cluster, "faults")
    sender.start()
    try:
        catch_up(ada, sender)

        # (a) The page's replica is killed; supervisord starts it again.
        victim = ada.replica
        os.kill(cluster.process_pids()[victim], signal.SIGKILL)
        expect(state).to_contain_text("reconnecting", timeout=5000)
        ada.post("ada-1 sent while reconnecting")
        ada.wait_live(timeout=20000)
        catch_up(ada, sender)
        ada.expect_in_log("Ada: ada-1 sent while reconnecting\n")
        assert ada.notice() == "", "a resume without a gap showed a notice"
        kill_seconds = time.monotonic() - started

        # (b) Redis restarts without persistence: history, ids and refs are lost.
        restart = in_background(cluster, "restart", "redis")
        time.sleep(0.3)
        ada.post("ada-2 sent while Redis restarts")
        finished(restart)
        expect(ada.page.locator("#chat-notice")).to_contain_text("may be missing", timeout=15000)
        catch_up(ada, sender)
        ada.expect_in_log("Ada: ada-2 sent while Redis restarts\n", timeout=15000)
        redis_seconds = time.monotonic() - started

        # (c) Rolling restart: each replica drains (1012) and is ready before the next.
        # The page's live socket is the last it opened; the restart drains it too.
        live_socket = len(ada.sockets()) - 1
        restart = in_background(cluster, "restart")
        time.sleep(0.5)
        ada.post("ada-3 sent during the rolling restart")
        rolled = finished(restart, timeout=80)
        catch_up(ada, sender)
        ada.expect_in_log("Ada: ada-3 sent during the rolling restart\n")
        # Closed with 1012 by a draining replica, the page was back within the jitter.
        sockets = ada.sockets()
        restarts = [
            n
            for n, s in enumerate(sockets)
            if n >= live_socket and s["code"] == CLOSE_SERVICE_RESTART
        ]
        assert restarts, f"no 1012 seen: {sockets}\n{rolled.stdout}"
        for n in restarts:
            assert sockets[n + 1]["openedAt"] - sockets[n]["closedAt"] < 1000, sockets
    finally:
        sender.stop()

    ada.expect_in_log(f"Bot: msg-{max(sender.acked_numbers())}\n")
    time.sleep(0.5)  # anything shown twice would arrive now
    lines = ada.lines()
    shown = [int(m[1]) for line in lines if (m := re.fullmatch(r"Bot: msg-(\d+)", line))]
    epochs = list(dict.fromkeys(epoch for epoch, _ in sender.acked.values()))
    acked = sorted(
        sender.acked, key=lambda n: (epochs.index(sender.acked[n][0]), sender.acked[n][1])
    )
    missing = sorted(set(acked) - set(shown))
    assert not missing, f"acknowledged but not shown: {missing}"
    assert len(shown) == len(set(shown)), (
        f"shown twice: {sorted(n for n in shown if shown.count(n) > 1)}"
    )
    assert not set(sender.refused) & set(sender.acked)
    # Shown: what was acknowledged, in id order; the sender's numbers rise with it.
    assert [n for n in shown if n in sender.acked] == acked
    assert shown == sorted(shown)
    for own in (
        "ada-1 sent while reconnecting",
        "ada-2 sent while Redis restarts",
        "ada-3 sent during the rolling restart",
    ):
        assert lines.count(f"Ada: {own}") == 1, own
    expect(ada.page.locator("#chat-pending .text")).to_have_count(0)
    ada.assert_not_reloaded()

    seconds = time.monotonic() - started
    print(
        f"\n{len(acked)} messages acknowledged in {len(epochs)} epochs, all shown once; "
        f"refused {sender.refused}; page sockets closed with "
        f"{[socket['code'] for socket in ada.sockets()]}; "
        f"sender connections {sender.connections}; kill done at {kill_seconds:.1f} s, "
        f"Redis at {redis_seconds:.1f} s, rolling restart at {seconds:.1f} s"
    )
    assert seconds < 90
    ada.close()
