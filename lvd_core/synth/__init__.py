"""Synthetic training and test data with known ground truth: body poses and shapes, 3D scans and photos.

Reproducible: every generator takes a numpy Generator; `SyntheticScans` seeds sample i with (seed, i).
"""

from .dataset import BodySampling, SyntheticScans, held_out_set, load_validation_set, sample_params, save_validation_set
from .poses import BODY_FAMILIES, EXTRA_BODY_FAMILIES, HAND_FAMILIES, JOINT_LIMITS, joint_pose_to_angles, sample_global_orient, sample_pose
from .renders import SyntheticPhoto, project, render_photo
from .scans import ScanRealism, SyntheticScan, from_file_frame, make_scan, to_file_frame, write_scan_file
from .shapes import sample_shape

__all__ = [
    "BODY_FAMILIES", "EXTRA_BODY_FAMILIES", "HAND_FAMILIES", "JOINT_LIMITS", "BodySampling", "ScanRealism", "SyntheticPhoto", "SyntheticScan",
    "SyntheticScans", "from_file_frame", "held_out_set", "joint_pose_to_angles", "load_validation_set", "make_scan",
    "project", "render_photo", "sample_global_orient", "sample_params", "sample_pose", "sample_shape",
    "save_validation_set", "to_file_frame", "write_scan_file",
]  # fmt: skip
