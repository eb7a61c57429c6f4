"""Fault drill figures as text: a table, a summary line and the details per scenario."""

from chat.protocol import CLOSE_SERVICE_RESTART

COLUMNS = [
    ("scenario", "scenario", "{}"),
    ("sent", "sent", "{}"),
    ("acked", "acked", "{}"),
    ("refused", "refused", "{}"),
    ("unans", "unanswered", "{}"),
    ("resent", "resent", "{}"),
    ("dlv min", "delivered_min", "{}"),
    ("dlv max", "delivered_max", "{}"),
    ("lost", "lost", "{}"),
    ("dup", "duplicated", "{}"),
    ("repub", "republished", "{}"),
    ("gaps", "gaps", "{}"),
    ("reconn", "reconnects", "{}"),
    ("closes", "closes", "{}"),
    ("recov s", "recovery_s", "{:.2f}"),
    ("ack s", "ack_recovery_s", "{:.2f}"),
    ("result", "passed", "{}"),
]


def cell(result, key, template):
    value = result[key]
    if key == "passed":
        return "ok" if value else "FAILED"
    if isinstance(value, dict):
        return ",".join(f"{k}:{v}" for k, v in value.items()) or "-"
    return template.format(value)


def table(results):
    rows = [[title for title, _, _ in COLUMNS]]
    rows += [[cell(r, key, template) for _, key, template in COLUMNS] for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in rows)
    return "\n".join(line.rstrip() for line in lines)


def summary_line(result):
    keys = ("sent", "acked", "refused", "unanswered", "lost", "duplicated", "recovery_s")
    figures = ", ".join(f"{key} {result[key]}" for key in keys)
    return f"{result['scenario']}: {'ok' if result['passed'] else 'FAILED'}: {figures}"


def shard_line(figures):
    keys = ("rooms", "sent", "acked", "refused", "unanswered", "lost", "duplicated", "gaps")
    keys += ("reconnects", "recovery_s", "ack_recovery_s", "longest_silence_s")
    return ", ".join(f"{key} {figures[key]}" for key in keys)


def details(result):
    """What the table leaves out: the fault, the spread, missed targets, log findings."""
    fault = result["fault"]
    lines = [
        f"{result['scenario']}: {fault['action']}, {fault['injected_after_s']} s into "
        f"{result['traffic_s']} s of traffic, back after {fault['back_after_s']} s; "
        f"clients per replica {result['spread']}; delivered {result['delivered_total']}; "
        f"acked as duplicate {result['acked_as_duplicate']}; max resume {result['max_resume_s']}"
        f" s; settled after {result['quiesce_s']} s: {result['settled']}",
    ]
    for error in fault.get("errors", []):
        lines.append(f"  fault note: {error}")
    lines.extend(f"  {note}" for note in fault.get("notes", []))
    names = ("refused_by_code", "errors", "connect_failures", "client_crashes", "unresumed")
    for name in names:
        if result[name]:
            lines.append(f"  {name}: {result[name]}")
    if result["missing_deliveries"] or result["refused_delivered"] or result["unknown_frames"]:
        lines.append(
            f"  missing deliveries {result['missing_deliveries']}, refused but delivered "
            f"{result['refused_delivered']}, unknown frames {result['unknown_frames']}"
        )
    for example in result["lost_examples"][:10]:
        lines.append(f"  lost: {example}")
    if result["scenario"] != "kill":
        lines.extend(
            f"  close not {CLOSE_SERVICE_RESTART}: {close}" for close in result["odd_closes"][:10]
        )
    if "api" in result:
        lines.append(f"  HTTP API publisher: {result['api']}")
    for part, figures in result.get("shards", {}).items():
        lines.append(f"  rooms on the {part} shard: {shard_line(figures)}")
    for target, met in result["targets"].items():
        if not met:
            lines.append(f"  MISSED: {target}")
    for name, found in result["logs"].items():
        lines.append(
            f"  log {name}: {found['lines']} warning/error lines, "
            f"{found['tracebacks']} tracebacks; first:"
        )
        lines.extend(f"    {line[:200]}" for line in found["first"][:10])
    return "\n".join(lines)
