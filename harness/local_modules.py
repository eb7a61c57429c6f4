"""The local cluster's modules (deploy/local), for the harness and the static tests."""

import importlib.util
import sys

from .paths import ROOT


def load_local_module(name):
    """A module of deploy/local, beside its scripts and not in a package: loaded by its
    path under its own name, as the scripts import each other, so that config.py and
    rendering.py share one `config`."""
    if name in sys.modules:
        return sys.modules[name]
    directory = ROOT / "deploy" / "local"
    if str(directory) not in sys.path:
        sys.path.append(str(directory))  # for their imports of each other
    spec = importlib.util.spec_from_file_location(name, directory / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
