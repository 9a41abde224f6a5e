"""Shared by the device scripts: the repository's engine on the import path (of child processes too) and typed
environment settings."""
import os
import sys
from pathlib import Path

PACKAGE_ROOT = str(Path(__file__).resolve().parents[1] / "RegistrationMisalignment")
sys.path.insert(0, PACKAGE_ROOT)
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [PACKAGE_ROOT, os.environ.get("PYTHONPATH")]))  # children too


def setting(name: str, default):
    """An environment setting with a typed default."""
    return type(default)(os.environ.get(name, default))
