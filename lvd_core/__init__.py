"""LVD core: Learned Vertex Descent body fitting in pure Python + PyTorch (never imports bpy)."""

__version__ = "0.2.0"
