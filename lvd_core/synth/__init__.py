"""Synthetic training and test data: body poses and shapes, 3D scans and photos with known ground truth."""
