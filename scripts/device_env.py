"""Shared by the device scripts: the repository's engine on the import path and typed environment settings."""
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "RegistrationMisalignment"))


def setting(name: str, default):
    """An environment setting with a typed default."""
    return type(default)(os.environ.get(name, default))
