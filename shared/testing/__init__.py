"""Test support shared by every service: the pytest plugin (`plugin`) and async helpers."""

from .helpers import eventually, produce, read_topic

__all__ = ["eventually", "produce", "read_topic"]
