"""LVD for Blender: fit a rigged, posed, shaped body model to a scan or a photo (Learned Vertex Descent).

The fitting is lvd_core (pure Python + PyTorch); this package is the thin Blender layer over it."""

import bpy

from . import operators, panel, preferences, properties

CLASSES = (*properties.CLASSES, *preferences.CLASSES, *operators.CLASSES, *panel.CLASSES)


def register():
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    properties.register_properties()
    addon = bpy.context.preferences.addons.get(preferences.ADDON_ID)  # absent while Blender first enables it
    preferences.refresh_dependencies(addon.preferences if addon else None)


def unregister():
    operators.stop_running_fits(bpy.context)
    preferences.stop_installation()
    properties.unregister_properties()
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
