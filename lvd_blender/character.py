"""Build a rigged, posed, shaped character from lvd_core's character description (numpy only, no torch).

The description (lvd_core.character.character_description) holds every number; this module only turns it into
Blender data: an armature (bones at the fitted rest joints, posed through pose-bone quaternions so it can be
re-posed and animated) and a mesh skinned to it by vertex groups and an Armature modifier (linear blend
skinning), in one collection per character.
"""

from __future__ import annotations

import json

import bpy
import numpy as np
from mathutils import Matrix

from .placement import rigid_and_scale

# Slider range of shape keys for unbounded shape coefficients (SMPL/MANO betas are ~N(0, 1)); Blender's
# default [0, 1] would clamp them.
BETA_SLIDER_RANGE = 10.0
# Skin weights added per build step: 25 ms with the machine under load (one Python call each), so building between UI events stays
# well under the 100 ms a user notices.
SKIN_WEIGHTS_PER_STEP = 2_500


def build_character(
    name: str,
    description: dict,
    collection: bpy.types.Collection | None = None,
    *,
    shape_as_keys: bool = False,
    frame_matrix: np.ndarray | None = None,
    residual_mm: float | None = None,
    doubtful: bool = False,
) -> tuple[bpy.types.Object, bpy.types.Object]:
    """Armature and mesh objects of the character in a new collection `name` (inside `collection`, default
    the scene's). `frame_matrix` (4, 4) maps the model's fitted frame to world space (units, rotation,
    location); None places the model upright at the origin. Any uniform scale of the placement is baked into
    the bones and the mesh, so the objects have scale 1 (and exported files the character's true size). With
    `shape_as_keys` the shape is shape keys over the model's neutral mesh instead of being baked into the rest
    mesh. residual_mm and doubtful (the fit's quality, lvd_core.results.FitResult) are stored on the armature.
    The mode and active object of the moment are kept."""
    steps = character_steps(name, description, collection, shape_as_keys=shape_as_keys, frame_matrix=frame_matrix,
                            residual_mm=residual_mm, doubtful=doubtful)  # fmt: skip
    while True:
        try:
            next(steps)
        except StopIteration as built:
            return built.value


def character_steps(name: str, description: dict, collection=None, *, shape_as_keys: bool = False,
                    frame_matrix: np.ndarray | None = None, residual_mm: float | None = None, doubtful: bool = False):
    """build_character as a generator: it yields after each piece of work of a few tens of milliseconds (so a
    modal operator can build between UI events) and returns (armature, mesh)."""  # fmt: skip
    zup = np.asarray(description["model_to_zup"])
    frame = zup if frame_matrix is None else np.asarray(frame_matrix, dtype=np.float64)
    world, scale = rigid_and_scale(frame @ description["fit_transform"] @ np.linalg.inv(zup))
    description = scaled_description(description, scale)

    parent_collection = collection or bpy.context.scene.collection
    character_collection = bpy.data.collections.new(name)
    parent_collection.children.link(character_collection)
    armature_obj = _build_armature(name, description, character_collection)
    armature_obj.matrix_world = Matrix(world.tolist())
    _pose(armature_obj, description)
    yield

    mesh_obj = _build_mesh(name, description, shape_as_keys, character_collection)
    yield
    yield from _add_skin_weights(mesh_obj, description)
    yield from _add_shape_keys(mesh_obj, description, shape_as_keys)
    mesh_obj.parent = armature_obj
    modifier = mesh_obj.modifiers.new("Armature", "ARMATURE")
    modifier.object = armature_obj
    modifier.use_deform_preserve_volume = False  # the models are linear blend skinned

    _store_fit(armature_obj, description, residual_mm, doubtful)
    return armature_obj, mesh_obj


def scaled_description(description: dict, scale: float) -> dict:
    """The character description with every length (bones, meshes, shape offsets) times `scale`."""
    if abs(scale - 1.0) < 1e-9:
        return description
    lengths = ("bone_heads", "bone_tails", "rest_vertices", "neutral_vertices", "pose_correctives")
    scaled = {**description, **{key: None if description[key] is None else scale * np.asarray(description[key])
                                for key in lengths}}  # fmt: skip
    scaled["shape_keys"] = [(key_name, scale * np.asarray(offsets), value) for key_name, offsets, value in description["shape_keys"]]
    return scaled


def _build_armature(name: str, description: dict, collection) -> bpy.types.Object:
    armature = bpy.data.armatures.new(name)
    armature_obj = bpy.data.objects.new(name, armature)
    collection.objects.link(armature_obj)
    view_layer = bpy.context.view_layer
    previous_active = view_layer.objects.active
    previous_mode = previous_active.mode if previous_active is not None else "OBJECT"
    if bpy.context.mode != "OBJECT":
        bpy.ops.object.mode_set(mode="OBJECT")
    view_layer.objects.active = armature_obj  # mode_set ignores temp_override: it acts on the active object
    bpy.ops.object.mode_set(mode="EDIT")
    heads, tails, z_axes = description["bone_heads"], description["bone_tails"], description["bone_z_axes"]
    bones = []
    for j, bone_name in enumerate(description["joint_names"]):
        bone = armature.edit_bones.new(bone_name)
        bone.head, bone.tail = heads[j].tolist(), tails[j].tolist()
        if z_axes is not None:
            bone.align_roll(z_axes[j].tolist())
        bone.use_connect = False  # heads stay exactly at the joints
        parent = description["parents"][j]
        if parent >= 0:
            bone.parent = bones[parent]
        bones.append(bone)
    bpy.ops.object.mode_set(mode="OBJECT")
    view_layer.objects.active = previous_active
    if previous_mode != "OBJECT":
        bpy.ops.object.mode_set(mode=previous_mode)
    return armature_obj


def _pose(armature_obj, description: dict) -> None:
    """Local rotation of every joint as its pose bone's quaternion: B^T R B in the bone's rest frame B."""
    for bone_name, rotation in zip(description["joint_names"], description["local_rotations"]):
        pose_bone = armature_obj.pose.bones[bone_name]
        rest = np.array(pose_bone.bone.matrix_local)[:3, :3]
        pose_bone.rotation_mode = "QUATERNION"
        pose_bone.rotation_quaternion = Matrix((rest.T @ rotation @ rest).tolist()).to_quaternion()


def _build_mesh(name: str, description: dict, shape_as_keys: bool, collection) -> bpy.types.Object:
    faces = np.asarray(description["faces"])
    base = description["neutral_vertices"] if shape_as_keys else description["rest_vertices"]
    mesh = bpy.data.meshes.new(name)
    mesh.vertices.add(len(base))
    mesh.vertices.foreach_set("co", np.asarray(base, dtype=np.float32).ravel())
    mesh.loops.add(faces.size)
    mesh.loops.foreach_set("vertex_index", faces.astype(np.int32).ravel())
    mesh.polygons.add(len(faces))
    mesh.polygons.foreach_set("loop_start", np.arange(0, faces.size, 3, dtype=np.int32))
    mesh.update()
    mesh_obj = bpy.data.objects.new(f"{name}_body", mesh)
    collection.objects.link(mesh_obj)
    return mesh_obj


def _add_skin_weights(mesh_obj, description: dict):
    """One vertex group per joint, filled SKIN_WEIGHTS_PER_STEP weights per step (one call per weight)."""
    for joint in description["joint_names"]:
        mesh_obj.vertex_groups.new(name=joint)
    groups = mesh_obj.vertex_groups
    vertices, joints, weights = (np.asarray(a) for a in description["skin"])
    for first in range(0, len(vertices), SKIN_WEIGHTS_PER_STEP):
        last = first + SKIN_WEIGHTS_PER_STEP
        for vertex, joint, weight in zip(vertices[first:last].tolist(), joints[first:last].tolist(), weights[first:last].tolist()):
            groups[joint].add((vertex,), weight, "REPLACE")
        yield


def _add_shape_keys(mesh_obj, description: dict, shape_as_keys: bool):
    """The shape (with shape_as_keys) and the pose correctives as shape keys, one per step."""
    keys = description["shape_keys"] if shape_as_keys else []
    correctives = description["pose_correctives"]
    if not keys and correctives is None:
        return
    base = description["neutral_vertices"] if shape_as_keys else description["rest_vertices"]
    mesh_obj.shape_key_add(name="Basis", from_mix=False)
    for key_name, offsets, value in keys:
        _add_shape_key(mesh_obj, key_name, base + offsets, value)
        yield
    if correctives is not None:  # the model's pose correctives at the fitted pose (turn off when re-posing)
        _add_shape_key(mesh_obj, "LVD_pose_correctives", base + correctives, 1.0)
        yield


def _add_shape_key(mesh_obj, name: str, positions: np.ndarray, value: float) -> None:
    key = mesh_obj.shape_key_add(name=name, from_mix=False)
    key.data.foreach_set("co", np.asarray(positions, dtype=np.float32).ravel())
    limit = max(BETA_SLIDER_RANGE, abs(value))
    key.slider_min, key.slider_max = min(0.0, -limit), max(1.0, limit)  # before the value: the range clamps it
    key.value = value


def _store_fit(armature_obj, description: dict, residual_mm: float | None, doubtful: bool) -> None:
    """The fit on the armature as custom properties: JSON of every parameter plus a few readable fields."""
    armature_obj["lvd_fit"] = json.dumps({"body_model": description["body_name"], **description["params"]})
    armature_obj["lvd_body_model"] = description["body_name"]
    armature_obj["lvd_shape"] = dict(zip(description["shape_names"], description["shape_values"]))
    if residual_mm is not None:
        armature_obj["lvd_residual_mm"] = float(residual_mm)
        armature_obj["lvd_doubtful"] = bool(doubtful)  # the network likely misread the pose: check the fit
