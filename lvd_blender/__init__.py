"""LVD for Blender: fit a rigged, posed, shaped body model to a scan or a photo (Learned Vertex Descent).

The fitting is lvd_core (pure Python + PyTorch); this package is the thin Blender layer over it."""

import bpy

from . import operators, panel, preferences, properties

CLASSES = (*properties.CLASSES, *preferences.CLASSES, *operators.CLASSES, *panel.CLASSES)


def register():
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    properties.register_properties()


def unregister():
    operators.stop_running_fits(bpy.context)
    properties.unregister_properties()
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
