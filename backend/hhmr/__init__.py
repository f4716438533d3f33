"""HHMR: holistic hand mesh recovery (backend package)."""

__version__ = "0.1.0"
