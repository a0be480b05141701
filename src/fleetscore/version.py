"""The version of this fleetscore (one place: the package, saved models and cluster workers compare it)."""

__version__ = "0.1.0"
