"""MkDocs hook: the configuration page's tables, generated at build time from the one
table of each kind of setting, so that the page cannot drift from them:

- the service's environment variables: services/chat/chatsite/variables.py;
- the cluster's settings: deploy/defaults.env, each with the comment right above it, in
  the sections its "## " lines start.

docs/configuration.md holds a marker for each table; the build fails on a setting of
defaults.env without a comment.
"""

from pathlib import Path

from chatsite.variables import VARIABLES

PAGE = "configuration.md"
DEFAULTS_FILE = Path("deploy") / "defaults.env"
SERVICE_MARKER = "<!-- generated: service variables -->"
CLUSTER_MARKER = "<!-- generated: cluster settings -->"


class UndocumentedSetting(Exception):
    """A setting of deploy/defaults.env without a comment to say what it means."""


def defaults_sections(text):
    """[(section, [(name, value, meaning)])] of a defaults.env text."""
    sections, comment = [], []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("## "):
            sections.append((line[3:], []))
            comment = []
        elif line.startswith("#"):
            comment.append(line[1:].strip())
        elif not line:
            comment = []
        else:
            name, _, value = line.partition("=")
            if not comment or not sections:
                raise UndocumentedSetting(f"{DEFAULTS_FILE}: {name} needs a section and a comment")
            sections[-1][1].append((name, value, " ".join(comment)))
            comment = []
    return sections


def cell(text):
    return text.replace("|", "\\|")


def anchored(name):
    return f'<a id="{name}"></a>`{name}`'


def service_default(variable):
    if variable.shown:
        return variable.shown
    if variable.default is None:
        return "none"
    if variable.default == "":
        return "empty"
    if isinstance(variable.default, bool):
        return f"`{str(variable.default).lower()}`"
    return f"`{variable.default}`"


def service_table():
    rows = [
        f"| {anchored(v.name)} | {cell(service_default(v))} | {cell(v.meaning)} |"
        for v in VARIABLES.values()
    ]
    return "\n".join(["| variable | default | meaning |", "| --- | --- | --- |", *rows])


def cluster_tables(root):
    parts = []
    for section, settings in defaults_sections((root / DEFAULTS_FILE).read_text()):
        rows = []
        for name, value, meaning in settings:
            # The service's own settings are anchored in its table, above.
            label = f"[`{name}`](#{name})" if name in VARIABLES else anchored(name)
            default = f"`{value}`" if value else "empty"
            rows.append(f"| {label} | {default} | {cell(meaning)} |")
        parts += [f"### {section}", "", "| setting | default | meaning |", "| --- | --- | --- |"]
        parts += [*rows, ""]
    return "\n".join(parts)


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri != PAGE:
        return markdown
    root = Path(config.config_file_path).parent
    for marker in (SERVICE_MARKER, CLUSTER_MARKER):
        if marker not in markdown:
            raise ValueError(f"{PAGE} has lost its marker {marker}")
    markdown = markdown.replace(SERVICE_MARKER, service_table())
    return markdown.replace(CLUSTER_MARKER, cluster_tables(root))
