"""RegistrationMisalignment engine: predict where a chest-CT registration is wrong (no Slicer needed)."""

__version__ = "0.7.0"
__all__ = ["MisalignmentPredictor", "PredictionResult"]


def __getattr__(name):
    """Import the predictor lazily, so that importing the package does not load torch."""
    if name in __all__:
        from . import inference
        return getattr(inference, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
