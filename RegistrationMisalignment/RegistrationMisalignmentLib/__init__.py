"""RegistrationMisalignment engine: predict where a chest-CT registration is wrong (no Slicer needed)."""

__version__ = "0.1.0"
