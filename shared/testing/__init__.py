"""Test support shared by every service: the pytest plugin (`plugin`) and async helpers."""

from .helpers import committed, eventually, produce, read_topic

__all__ = ["committed", "eventually", "produce", "read_topic"]
