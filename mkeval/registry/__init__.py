"""Plugins: the hooks they implement, the contracts they register, and the registry that finds them."""

from .contracts import KINDS
from .manager import (ENTRY_POINT_GROUP, Entry, LoadError, Registry, get_registry, load_entry_points, register,
                      register_plugin, reset_registry, unknown_name_message, valid_name)

__all__ = ["ENTRY_POINT_GROUP", "KINDS", "Entry", "LoadError", "Registry", "get_registry", "load_entry_points",
           "register", "register_plugin", "reset_registry", "unknown_name_message", "valid_name"]
