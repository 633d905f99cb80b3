"""LVD networks: the protocol and registry (`base`), the authors' configurations (`paper`), our compact ones."""

from . import compact, paper  # noqa: F401  (registers the network classes for checkpoint loading)
from .base import LVDNetwork, register_network, registered_names

__all__ = ["LVDNetwork", "register_network", "registered_names"]
