"""How long clients took to recover from a fault, from what they recorded: pure
functions over ResumingClient.timeline, .losses, .resumed, .acks and .refusals."""

import itertools


def first_fresh_delivery(client, since):
    """When the client first received a message created at or after `since`, after it."""
    return min((got for got, created in client.timeline if created >= since), default=None)


def delivery_recovery(clients, injected_at):
    """The worst, over clients and their outages from the injection on, of the time until
    the client received a message sent after the outage began; inf if one never did."""
    worst = 0.0
    for client in clients:
        starts = [injected_at, *(lost for lost in client.losses if lost >= injected_at)]
        for start in starts:
            got = first_fresh_delivery(client, start)
            worst = max(worst, float("inf") if got is None else got - start)
    return worst


def ack_recovery(clients, injected_at):
    """The worst, over clients, of the time from the injection until an ack of a send made
    after both the injection and the client's last refused send; inf if none came."""
    worst = 0.0
    for client in clients:
        refused = [sent for sent in client.refusals if sent is not None and sent >= injected_at]
        since = max([injected_at, *refused])
        acks = [got for got, sent in client.acks if sent is not None and sent >= since]
        worst = max(worst, min(acks) - injected_at if acks else float("inf"))
    return worst


def max_resume(clients):
    """The longest time a client took from losing its connection to resuming."""
    return max((back - lost for c in clients for lost, back in c.resumed), default=0)


def longest_silence(clients, start, end):
    """The longest time, over clients, between receptions of new messages within
    [start, end] (its edges count as receptions)."""
    worst = 0.0
    for client in clients:
        times = sorted(got for got, _ in client.timeline if start <= got <= end)
        edges = [start, *times, end]
        worst = max(worst, *(later - earlier for earlier, later in itertools.pairwise(edges)))
    return worst
