"""The service's modules import only downward, library internals stay in one module
each, the channel layer is only an adapter, and the type checker guards the contracts."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SERVICE = Path(__file__).resolve().parents[2]
PACKAGES = ("chat", "chatsite")
# The one module allowed each library's private names and internals.
SEAMS = {"channels_redis": "chat/channel_layer.py", "daphne": "chatsite/serve.py"}
# Modules that use a library's private names, each checked at start-up: the seams, and
# redis-py's connections (redis-py is imported everywhere, so it has no import seam).
PRIVATE_NAME_USERS = {*SEAMS.values(), "chat/redis_connections.py"}


def modules():
    for package in PACKAGES:
        for path in sorted((SERVICE / package).rglob("*.py")):
            if "tests" not in path.relative_to(SERVICE).parts:
                yield path


def module_name(path):
    relative = path.relative_to(SERVICE).with_suffix("")
    parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
    return ".".join(parts)


def imported(path):
    """(module imported, line, at module level) for each import of a service module."""
    tree = ast.parse(path.read_text())
    package = module_name(path).rsplit(".", 1)[0]
    top_level = set(tree.body)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = f"{package}.{base}" if base else package
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            yield name, node.lineno, node in top_level


def service_imports(path, known):
    return {name for name, _, _ in imported(path) if name in known}


def test_no_import_cycle():
    """Tests that the import graph of chat and chatsite has no cycle."""
    graph = {module_name(path): path for path in modules()}
    edges = {name: service_imports(path, graph) - {name} for name, path in graph.items()}
    visiting, done = [], set()

    def visit(name):
        if name in visiting:
            cycle = visiting[visiting.index(name) :] + [name]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if name in done:
            return
        visiting.append(name)
        for target in sorted(edges[name]):
            visit(target)
        visiting.pop()
        done.add(name)

    for name in sorted(graph):
        visit(name)


def test_no_import_hidden_in_a_function():
    hidden = [
        f"{path.relative_to(SERVICE)}:{line} {name}"
        for path in modules()
        for name, line, at_top in imported(path)
        if not at_top and name.split(".")[0] in PACKAGES
    ]
    assert not hidden


@pytest.mark.parametrize(("library", "seam"), SEAMS.items())
def test_a_library_is_imported_by_its_seam_only(library, seam):
    users = {
        str(path.relative_to(SERVICE))
        for path in modules()
        for name, _, _ in imported(path)
        if name.split(".")[0] == library
    }
    assert users <= {seam}, f"{library} used outside {seam}: {sorted(users - {seam})}"


def test_private_names_of_libraries_are_used_in_the_seams_only():
    """Tests that `x._name` appears only where a library's internals are meant to be
    used (the channel layer, the Daphne server, redis-py's connections), so that an
    upgrade has one place to look at."""
    users = {
        str(path.relative_to(SERVICE))
        for path in modules()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute)
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
    }
    assert users <= PRIVATE_NAME_USERS


def test_the_channel_layer_imports_nothing_of_the_consumer_side():
    """Tests that chat.channel_layer, the adapter to channels_redis, hands messages over
    through its MessageHandler and imports none of the modules that handle them."""
    known = {module_name(path): path for path in modules()}
    imports = service_imports(SERVICE / "chat" / "channel_layer.py", known)
    assert imports <= {"chat", "chat.channel_layer"}, sorted(imports)


def test_the_type_checker_fails_on_a_broken_contract(tmp_path):
    """Tests that the service's types are checked against its contracts: with a method
    the consumer's write flow needs (WriteFlow.ready_to_write) removed from the
    server's write flow, mypy fails and names it. `make lint` runs it on the real code."""
    repository = SERVICE.parents[1]
    copy = tmp_path / "services" / "chat"
    shutil.copytree(SERVICE, copy, ignore=shutil.ignore_patterns("tests", "__pycache__"))
    shutil.copy(repository / "pyproject.toml", tmp_path)
    serve = copy / "chatsite" / "serve.py"
    source = serve.read_text()
    start = source.index("    def ready_to_write(self) -> bool:")
    end = source.index("    def send_shared(self, frame: SharedFrame) -> bool:")
    serve.write_text(source[:start] + source[end:])
    checked = subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "cache")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert '"SocketWriteFlow" is missing following "WriteFlow" protocol member' in checked.stdout
    assert "ready_to_write" in checked.stdout
    assert "Found 1 error in 1 file" in checked.stdout, checked.stdout
