"""What a local cluster's logs said during a run: warnings, errors and tracebacks."""

import re

LOG_PATTERN = re.compile(r"Traceback|\bERROR\b|\bCRITICAL\b|\bWARNING\b|Exception")
LOG_NOISE = ("Memory overcommit must be enabled",)  # Redis' start-up advice
QUIET_LOGS = ("prometheus", "supervisord")


def log_offsets(cluster):
    """Each log's size now: where log_findings starts reading."""
    return {path.name: path.stat().st_size for path in (cluster.run_dir / "logs").glob("*.log")}


def log_findings(cluster, offsets, excerpt=20):
    """Warnings, errors and tracebacks each log got since `offsets`, with the first lines."""
    findings = {}
    for path in sorted((cluster.run_dir / "logs").glob("*.log")):
        if path.name.startswith(QUIET_LOGS):
            continue
        with path.open("rb") as log:
            log.seek(offsets.get(path.name, 0))
            lines = log.read().decode(errors="replace").splitlines()
        matched = [line for line in lines if LOG_PATTERN.search(line)]
        matched = [line for line in matched if not any(n in line for n in LOG_NOISE)]
        if matched:
            findings[path.stem] = {
                "lines": len(matched),
                "tracebacks": sum("Traceback" in line for line in matched),
                "first": [line for line in matched if "Traceback" not in line][:excerpt],
            }
    return findings
