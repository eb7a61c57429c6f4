"""The protocol's one mirror, in the Locust file (its image holds only that file),
checked against chat.protocol."""

import ast

from chat import protocol
from harness.paths import ROOT

LOCUSTFILE = ROOT / "loadtests" / "locustfile.py"


def module_constants(path):
    """Module-level NAME = literal assignments of a file, read without importing it
    (importing the Locust file would patch this process with gevent)."""
    constants = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    constants[target.id] = node.value.value
    return constants


def test_locustfile_mirrors_the_subprotocol():
    """Tests that the Locust file offers the subprotocol chat.protocol defines."""
    assert module_constants(LOCUSTFILE)["SUBPROTOCOL"] == protocol.SUBPROTOCOL
