"""Person landmarks on scans: rendered views, a pretrained 2D detector, 3D triangulation and the facing."""
