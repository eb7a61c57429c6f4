"""The test layout a newcomer relies on: helpers live in packages, so no Python file
imports from tests/, and a test file's name says which one it is, so no two test files
anywhere in the repository share a base name."""

import ast
from collections import defaultdict
from pathlib import Path

from harness.paths import ROOT

# Where the service's packages (chat, chatsite) are imported from (pyproject's pythonpath).
SERVICE_ROOT = Path("services") / "chat"
# Virtualenvs, run directories, caches and build output: not the repository's code.
IGNORED_PARTS = {"node_modules", "__pycache__", "build", "dist"}


def python_files(root):
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        if not any(part.startswith(".") or part in IGNORED_PARTS for part in parts):
            yield path


def module_parts(root, path):
    """The dotted name of a file as Python imports it, as parts, and whether it is a
    package's __init__."""
    relative = path.relative_to(root)
    if relative.is_relative_to(SERVICE_ROOT):
        relative = relative.relative_to(SERVICE_ROOT)
    parts = relative.with_suffix("").parts
    if parts[-1] == "__init__":
        return parts[:-1], True
    return parts, False


def imports(root, path):
    """(line, the dotted names it imports) of every import in a file, relative ones
    resolved; `from a import b` imports a and a.b."""
    parts, is_package = module_parts(root, path)
    package = parts if is_package else parts[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield node.lineno, [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else ()
            module = ".".join([*base, *([node.module] if node.module else [])])
            yield node.lineno, [module, *(f"{module}.{alias.name}" for alias in node.names)]


def in_tests(name):
    """The top-level tests package, or a test module or conftest of any package (the
    service's unit tests share their helpers through chat/tests/clients.py)."""
    last = name.rsplit(".", 1)[-1]
    return (
        name == "tests"
        or name.startswith("tests.")
        or last.startswith("test_")
        or last == "conftest"
    )


def imports_from_tests(root):
    """`file:line module` for every import of the tests package or anything in it."""
    return [
        f"{path.relative_to(root)}:{line} {min(filter(in_tests, names), key=len)}"
        for path in python_files(root)
        for line, names in imports(root, path)
        if any(map(in_tests, names))
    ]


def duplicate_test_file_names(root):
    """Base name -> paths, for each name that more than one test file has."""
    paths = defaultdict(list)
    for path in python_files(root):
        if path.name.startswith("test_") or path.name.endswith("_test.py"):
            paths[path.name].append(str(path.relative_to(root)))
    return {name: found for name, found in paths.items() if len(found) > 1}


def test_nothing_imports_from_tests():
    """Tests that no Python file in the repository imports the tests package or a module
    in it (a test file, a conftest, a helper): shared code belongs in harness/."""
    found = imports_from_tests(ROOT)
    assert not found, "imports from tests/ (move the helper to harness/):\n" + "\n".join(found)


def test_no_two_test_files_share_a_base_name():
    """Tests that every test file's base name is unique in the repository."""
    shared = duplicate_test_file_names(ROOT)
    assert not shared, (
        f"test files with the same base name (name them after what they test): {shared}"
    )


def test_the_checks_find_what_they_look_for(tmp_path):
    """Tests that both checks report a planted case: an absolute and a relative import
    from tests, and two test files of one name."""
    for directory in ("tests/integration", "tests/deploy", "harness", "services/chat/chat/tests"):
        (tmp_path / directory).mkdir(parents=True)
    (tmp_path / "harness" / "traffic.py").write_text("from tests.deploy import test_alerts\n")
    (tmp_path / "tests" / "integration" / "test_edge.py").write_text(
        "import json\n\nfrom .conftest import start_cluster\n"
    )
    (tmp_path / "tests" / "deploy" / "test_edge.py").write_text("from harness import cluster\n")
    (tmp_path / "services/chat/chat/tests" / "test_fanout.py").write_text("from . import x\n")
    assert imports_from_tests(tmp_path) == [
        "harness/traffic.py:1 tests.deploy",
        "tests/integration/test_edge.py:3 tests.integration.conftest",
    ]
    assert duplicate_test_file_names(tmp_path) == {
        "test_edge.py": ["tests/deploy/test_edge.py", "tests/integration/test_edge.py"]
    }
