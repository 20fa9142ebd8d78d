"""The library's version, in one place: ``pyproject.toml`` reads it from here, and so does the code."""

__version__ = "0.1.0"
