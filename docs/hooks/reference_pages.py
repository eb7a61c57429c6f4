"""MkDocs hook: the parts of pages whose source is code, generated at build time so that
they cannot drift from it.

- protocol.md: the error codes (chat.protocol.ERRORS, with the detail each frame carries),
  the close codes (chat.protocol.CLOSE_*) and the protocol's constants. What each code
  means to a client is written here, keyed by code: the build fails when a code has no
  entry, or an entry no code.
- operations/metrics.md: every chat_* metric the service defines (chat.metrics), with its
  type, labels and help text.
- performance/capacity-model.md: the table loadtests/capacity_model.py prints.
- development/tests.md: the map of the tests, each test file with the first sentence of
  its docstring, by directory.
- performance/results/<name>.md: loadtests/results/<name>/README.md, for each such page
  the nav names.
"""

import ast
import importlib.util
from pathlib import Path

from mkdocs.structure.files import File
from prometheus_client.metrics import MetricWrapperBase

from chat import metrics, protocol

RESULTS_PAGES = "performance/results/"

# error code -> (cause, what follows); the detail comes from chat.protocol.ERRORS.
ERROR_OUTCOMES = {
    "invalid_json": ("the text frame is not JSON", "stays open"),
    "invalid_frame": ("JSON, but not an object", "stays open"),
    "invalid_message": ("`message` is missing or not a string", "stays open"),
    "message_too_large": (
        "the frame is over `CHAT_MAX_MESSAGE_BYTES` bytes of UTF-8",
        "stays open",
    ),
    "binary_not_supported": ("a binary frame", "stays open"),
    "invalid_room": ("the room name breaks the rule above", "closed with 4400"),
    "invalid_ref": ("`ref` is not 1 to 64 of `A-Z a-z 0-9 _ -`", "stays open; nothing sent"),
    "invalid_resume": (
        "`last_id` is not a whole number of at most 18 digits, `epoch` is over 32"
        " characters, or `epoch` comes without `last_id`",
        "stays open, joined as a new client (the newest messages are replayed)",
    ),
    "rate_limited": (
        "over `CHAT_RATE_LIMIT` messages a second, after a burst of `CHAT_RATE_BURST`",
        "stays open; that message was not sent: resend it (same ref) after a pause",
    ),
    "server_full": (
        "the replica holds `CHAT_MAX_CONNECTIONS` WebSockets",
        "closed with 1013",
    ),
    "unavailable": (
        "Redis did not take the message, or (at join) could not be reached",
        "a message: stays open, nothing was sent, a resend with the same ref is safe;"
        " at join: closed with 1013",
    ),
}

# CLOSE_* constant -> (meaning, what a client does).
CLOSE_MEANINGS = {
    "CLOSE_MESSAGE_TOO_BIG": (
        "a frame over `CHAT_MAX_FRAME_BYTES`, refused before it is read whole",
        "fix the client",
    ),
    "CLOSE_SERVICE_RESTART": (
        "the replica is draining (restart, deploy)",
        "reconnect at once and resume with `last_id`",
    ),
    "CLOSE_TRY_AGAIN_LATER": (
        "Redis unreachable at join (after an `unavailable` frame), or `server_full`",
        "reconnect with backoff",
    ),
    "CLOSE_SLOW_CONSUMER": (
        "the client did not read what it was sent fast enough (slow consumer)",
        "reconnect with backoff and resume with `last_id`: nothing is lost",
    ),
    "CLOSE_INVALID_ROOM": ("the room name breaks the rule", "do not retry"),
}


def check_keys(what, documented, defined):
    missing, stale = sorted(set(defined) - set(documented)), sorted(set(documented) - set(defined))
    if missing or stale:
        raise ValueError(f"{what}: not described here: {missing}; described, not defined: {stale}")


def error_table():
    check_keys("chat.protocol.ERRORS", ERROR_OUTCOMES, protocol.ERRORS)
    rows = [
        f"| `{code}` | `{detail}` | {ERROR_OUTCOMES[code][0]} | {ERROR_OUTCOMES[code][1]} |"
        for code, detail in protocol.ERRORS.items()
    ]
    return "\n".join(["| `code` | `detail` | cause | then |", "| --- | --- | --- | --- |", *rows])


def close_table():
    codes = {name: value for name, value in vars(protocol).items() if name.startswith("CLOSE_")}
    check_keys("chat.protocol.CLOSE_*", CLOSE_MEANINGS, codes)
    rows = [
        f"| {value} | `{name}` | {CLOSE_MEANINGS[name][0]} | {CLOSE_MEANINGS[name][1]} |"
        for name, value in sorted(codes.items(), key=lambda item: item[1])
    ]
    header = "| close code | `chat.protocol` | meaning | what a client does |"
    return "\n".join([header, "| --- | --- | --- | --- |", *rows])


def constants_table():
    rows = [
        ("subprotocol", f"`{protocol.SUBPROTOCOL}`", "`SUBPROTOCOL`"),
        ("room name", protocol.ROOM_NAME_RULE, "`ROOM_NAME_PATTERN`"),
        (
            "display name",
            f"1 to {protocol.NAME_MAX_LENGTH} printable characters",
            "`NAME_MAX_LENGTH`",
        ),
        ("message ref", f"`{protocol.REF_PATTERN.pattern}`", "`REF_PATTERN`"),
        (
            "history gaps",
            ", ".join(
                f"`{gap}`" for gap in (protocol.GAP_NONE, protocol.GAP_TRIMMED, protocol.GAP_RESET)
            ),
            "`GAP_*`",
        ),
        (
            "errors a client resends after",
            ", ".join(f"`{e}`" for e in protocol.RETRYABLE_ERRORS),
            "`RETRYABLE_ERRORS`",
        ),
    ]
    lines = ["| what | value | `chat.protocol` |", "| --- | --- | --- |"]
    return "\n".join(lines + [f"| {a} | {b} | {c} |" for a, b, c in rows])


SERIES_SUFFIX = {"counter": "_total", "info": "_info"}


def metrics_table():
    rows = []
    for metric in vars(metrics).values():
        if not isinstance(metric, MetricWrapperBase):
            continue
        (family,) = metric.describe()
        # prometheus_client keeps a metric's label names private; read directly, so that
        # an upgrade that moves them fails the docs' build rather than drops the column.
        labels = ", ".join(f"`{label}`" for label in metric._labelnames)
        name = family.name + SERIES_SUFFIX.get(family.type, "")
        rows.append(f"| `{name}` | {family.type} | {labels} | {family.documentation} |")
    for resource, documentation in metrics.RESOURCES.items():
        rows.append(f"| `{metrics.NAMESPACE}_{resource}` | gauge | | {documentation} |")
    return "\n".join(["| metric | type | labels | help |", "| --- | --- | --- | --- |", *rows])


def capacity_table(root):
    path = root / "loadtests" / "capacity_model.py"
    spec = importlib.util.spec_from_file_location("capacity_model", path)
    model = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(model)
    return model.table(model.Inputs())


TEST_DIRECTORIES = (
    "services/chat/chat/tests",
    "services/chat/chatsite/tests",
    "tests/deploy",
    "tests/loadtests",
    "tests/integration",
    "tests/compose",
    "tests/docs",
    "tests",
)


def test_map(root):
    """Each test file and what it tests (its docstring's first sentence), by directory.
    A test file without a docstring fails the build."""
    sections = []
    for directory in TEST_DIRECTORIES:
        rows = []
        for path in sorted((root / directory).glob("test_*.py")):
            docstring = ast.get_docstring(ast.parse(path.read_text()))
            if not docstring:
                raise ValueError(f"{path.relative_to(root)} has no docstring saying what it tests")
            first = " ".join(docstring.split()).split(". ")[0].rstrip(".")
            rows.append(f"| `{path.name}` | {first}. |")
        table = ["| file | tests |", "| --- | --- |", *rows]
        sections.append(f"#### `{directory}/`\n\n" + "\n".join(table))
    return "\n\n".join(sections)


GENERATED = {
    "protocol.md": {
        "<!-- generated: error codes -->": lambda root: error_table(),
        "<!-- generated: close codes -->": lambda root: close_table(),
        "<!-- generated: protocol constants -->": lambda root: constants_table(),
    },
    "operations/metrics.md": {"<!-- generated: metrics -->": lambda root: metrics_table()},
    "performance/capacity-model.md": {"<!-- generated: capacity model -->": capacity_table},
    "development/tests.md": {"<!-- generated: test map -->": test_map},
}


def on_page_markdown(markdown, page, config, files):
    root = Path(config.config_file_path).parent
    for marker, generate in GENERATED.get(page.file.src_uri, {}).items():
        if marker not in markdown:
            raise ValueError(f"{page.file.src_uri} has lost its marker {marker}")
        markdown = markdown.replace(marker, generate(root))
    return markdown


def nav_pages(nav):
    for item in nav or ():
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            for value in item.values():
                yield from nav_pages([value] if isinstance(value, str) else value)


def results_page(folder):
    files = ", ".join(
        f"`{path.name}`" for path in sorted(folder.iterdir()) if path.name != "README.md"
    )
    note = f"This page is `loadtests/results/{folder.name}/README.md`; beside it: {files}."
    return f"{(folder / 'README.md').read_text().rstrip()}\n\n---\n\n{note}\n"


def on_files(files, config):
    root = Path(config.config_file_path).parent
    for page in nav_pages(config.nav):
        if page.startswith(RESULTS_PAGES):
            folder = root / "loadtests" / "results" / Path(page).stem
            files.append(File.generated(config, page, content=results_page(folder)))
    return files
