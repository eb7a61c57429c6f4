"""What a fault drill must show: per scenario, the targets its figures meet or miss."""

from chat.protocol import CLOSE_SERVICE_RESTART

# Rooms on an untouched shard: clients send 5 messages/s each, so a room hears several
# a second; a second without one is an interruption.
SILENCE_LIMIT_S = 1.0
# The slow scenario's link is 50 ms each way (harness/faults/network.py).
SLOW_MIN_ONE_WAY_MS = 45


def fault_took_effect(scenario, figures):
    """Whether the fault happened as meant, so that a quiet run cannot pass for a good one."""
    restarted = figures["fault"].get("restarted", {})
    replaced = bool(restarted) and all(old != new and new for old, new in restarted.values())
    if scenario == "kill":
        return replaced and figures["reconnects"] >= 1
    if scenario == "redis":
        return replaced and figures["epochs_per_room_min"] >= 2
    if scenario == "shard":
        return replaced and figures["shards"]["restarted"]["epochs_per_room_min"] >= 2
    if scenario == "failover":
        return replaced and "new_primary" in figures["fault"]
    if scenario == "api":
        fault = figures["fault"]
        replicas = [name for name in fault.get("restarted", {}) if name.startswith("chat-")]
        return replaced and bool(replicas) and "new_primary" in fault and figures["reconnects"] >= 1
    fault = figures["fault"]
    if scenario == "partition":
        # Packets were dropped, and the replica said so: /readyz failed during the cut.
        return fault.get("partition_dropped_packets", 0) > 0 and fault.get("unready_samples", 0) > 0
    if scenario == "slow":
        lossy = fault.get("dropped_packets", 0) > 0 or not fault.get("loss_percent")
        return fault.get("one_way_ms", 0) >= SLOW_MIN_ONE_WAY_MS and lossy
    return replaced and figures["connection_losses_min"] >= 1


def data_loss_targets(figures, recovery_limit):
    """What a Redis that lost its data must still give: every acknowledged message
    delivered, the rest refused with an error, and quick recovery."""
    limit = recovery_limit
    return {
        "every acknowledged message delivered to its room (lost == 0)": figures["lost"] == 0,
        "everything else refused with an error (unanswered == 0)": figures["unanswered"] == 0,
        "refused messages not delivered": figures["refused_delivered"] == 0,
        "duplicated == 0": figures["duplicated"] == 0,
        f"delivery recovery <= {limit:g} s": figures["recovery_s"] <= limit,
        f"ack recovery <= {limit:g} s": figures["ack_recovery_s"] <= limit,
        "every client resumed after losing its connection": not figures["unresumed"],
    }


def untouched_targets(figures):
    """Rooms a fault must not reach: nothing lost, refused, reconnected or gapped."""
    return {
        "lost == 0, duplicated == 0": figures["lost"] == figures["duplicated"] == 0,
        "nothing refused or unanswered": figures["refused"] == figures["unanswered"] == 0,
        "no error frame": not figures["errors"],
        "no reconnect": figures["reconnects"] == 0 and not figures["closes"],
        "no gap": not figures["gaps"],
        f"no client silent for more than {SILENCE_LIMIT_S:g} s": (
            figures["longest_silence_s"] <= SILENCE_LIMIT_S
        ),
    }


def targets(scenario, figures, recovery_limit):
    """Target -> met, for one scenario's figures."""
    answered = figures["unanswered"] == 0
    sound = {
        "no client failed (client_crashes)": not figures["client_crashes"],
        "the fault took effect": fault_took_effect(scenario, figures),
    }
    if scenario == "redis":
        return {**data_loss_targets(figures, recovery_limit), **sound}
    if scenario == "failover":
        limit = recovery_limit
        return {
            "lost == 0, duplicated == 0, republished == 0": (
                figures["lost"] == figures["duplicated"] == figures["republished"] == 0
            ),
            "every message answered (unanswered == 0)": answered,
            "nothing refused for good (refused == 0)": figures["refused"] == 0,
            "every history survived (one epoch per room)": figures["epochs_per_room_max"] == 1,
            f"acks back <= {limit:g} s after the failover": (
                figures["ack_recovery_s"] - figures["fault"].get("failover_s", 0) <= limit
            ),
            **sound,
        }
    if scenario == "api":
        api = figures["api"]
        return {
            "lost == 0, duplicated == 0, republished == 0 (members' and API messages)": (
                figures["lost"] == figures["duplicated"] == figures["republished"] == 0
            ),
            "every client message answered (unanswered == 0)": answered,
            "every API post answered 2xx in the end": (
                api["posts"] > 0 and api["acked"] == api["posts"]
            ),
            "a retried key is answered with its first id, as a duplicate": (
                api["reposted_keys"] > 0 and not api["repost_mismatches"]
            ),
            "every history survived (one epoch per room)": figures["epochs_per_room_max"] == 1,
            **sound,
        }
    if scenario == "shard":
        shards = figures["shards"]
        untouched = untouched_targets(shards["untouched"])
        restarted = data_loss_targets(shards["restarted"], recovery_limit)
        return {
            **{f"other shard's rooms: {name}": met for name, met in untouched.items()},
            **{f"restarted shard's rooms: {name}": met for name, met in restarted.items()},
            **sound,
        }
    checks = {
        "lost == 0": figures["lost"] == 0,
        "duplicated == 0": figures["duplicated"] == 0,
        "republished == 0": figures["republished"] == 0,
        "every message answered (unanswered == 0)": answered,
        "every client resumed after losing its connection": not figures["unresumed"],
        "every client recovered": figures["recovery_s"] < float("inf"),
        **sound,
    }
    if scenario == "partition":
        limit = recovery_limit
        receive_again = figures["fault"].get("receive_again_s", float("inf"))
        checks["refused messages not delivered"] = figures["refused_delivered"] == 0
        checks[f"the cut replica's clients receive again <= {limit:g} s after the heal"] = (
            receive_again <= limit
        )
    if scenario == "rolling":
        closes = figures["closes"]
        checks[f"every close during the drain is {CLOSE_SERVICE_RESTART}"] = bool(closes) and set(
            closes
        ) == {str(CLOSE_SERVICE_RESTART)}
    return checks
