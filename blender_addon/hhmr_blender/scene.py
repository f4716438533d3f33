"""Everything that touches Blender data: hand objects, rigs, shape keys, selections.

Thin on purpose: the maths lives in handdata, hypotheses and jobs, which run without bpy.
"""

from __future__ import annotations

import math
import secrets
from contextlib import contextmanager

import bpy
import numpy as np
from mathutils import Matrix, Vector

from . import handdata, hypotheses
from .handdata import HandTopology
from .hypotheses import HypothesisSet
from .props import RIG_BONES

BASIS = "Basis"
SUBDIVISION = "HHMR smooth"  # the Subdivision modifier every new hand gets
SPACING = 0.25  # metres between a hand and a new hand made from it (a hand is about 0.19)
PHOTO_SPACING = 1.0  # metres between the cameras (and hands) of successive photos
PHOTO_SIZE = "hhmr_photo_size"  # a photo camera's custom property: the photo's pixel size


# ---------------------------------------------------------------------------- hand objects

def is_hand(obj: bpy.types.Object | None) -> bool:
    return obj is not None and obj.type == "MESH" and bool(obj.hhmr.is_hand)


def hand_of(obj: bpy.types.Object | None) -> bpy.types.Object | None:
    """The HHMR hand mesh for an object: itself, or the hand an armature drives."""
    if is_hand(obj):
        return obj
    if obj is not None and obj.type == "ARMATURE":
        for child in obj.children:
            if is_hand(child):
                return child
    return None


def rig_of(hand: bpy.types.Object) -> bpy.types.Object | None:
    for mod in hand.modifiers:
        if mod.type == "ARMATURE" and mod.object is not None:
            return mod.object
    return None


def _set_mode(obj: bpy.types.Object, mode: str) -> None:
    view_layer = bpy.context.view_layer
    view_layer.objects.active = obj
    window = bpy.context.window or (bpy.context.window_manager.windows[0]
                                    if bpy.context.window_manager.windows else None)
    with bpy.context.temp_override(window=window, active_object=obj, object=obj,
                                   view_layer=view_layer):
        bpy.ops.object.mode_set(mode=mode)


def create_hand(topo: HandTopology, handedness: str, name: str,
                collection: bpy.types.Collection | None = None,
                location: np.ndarray | None = None) -> bpy.types.Object:
    """A hand mesh of the backend's topology, skinned to a 16-bone armature (its parent)."""
    collection = collection or bpy.context.scene.collection
    verts, faces = topo.mesh(handedness)
    mesh = bpy.data.meshes.new(name)
    mesh.from_pydata(verts.tolist(), [], faces.tolist())
    mesh.polygons.foreach_set("use_smooth", np.ones(len(mesh.polygons), bool))
    mesh.update()
    obj = bpy.data.objects.new(name, mesh)
    rig = bpy.data.objects.new(f"{name} rig", bpy.data.armatures.new(f"{name} rig"))
    collection.objects.link(rig)
    collection.objects.link(obj)
    if location is not None:
        rig.location = [float(x) for x in location]
    _set_mode(rig, "EDIT")
    try:
        made = {}
        for b in topo.bones(handedness):
            eb = rig.data.edit_bones.new(b.name)
            eb.head, eb.tail = b.head.tolist(), b.tail.tolist()
            if b.parent:
                eb.parent = made[b.parent]
            made[b.name] = eb
    finally:
        _set_mode(rig, "OBJECT")
    for j, joint in enumerate(topo.joint_names):
        group = obj.vertex_groups.new(name=joint)
        w = topo.skin_weights[:, j]
        for i in np.flatnonzero(w > 1e-6):
            group.add([int(i)], float(w[i]), "REPLACE")
    obj.parent = rig
    mod = obj.modifiers.new("HHMR rig", "ARMATURE")
    mod.object = rig
    # smooth in the viewport and finer in renders; operators read the base mesh (base_mesh)
    sub = obj.modifiers.new(SUBDIVISION, "SUBSURF")
    sub.levels, sub.render_levels = viewport_subdivision(), 2
    obj.hhmr.is_hand, obj.hhmr.handedness = True, handedness
    return obj


def viewport_subdivision() -> int:
    """A new hand's subdivision level in the viewport: 1, or 0 where software OpenGL draws it
    (llvmpipe, as under Xvfb), where that level doubles the wait for the hand's first frame
    (about 0.25 s more, docs/photos.md); renders subdivide either way."""
    try:
        import gpu

        return 0 if gpu.platform.device_type_get() == "SOFTWARE" else 1
    except (ImportError, SystemError, AttributeError):  # background Blender: nothing drawn
        return 1


def beside(hand: bpy.types.Object) -> np.ndarray:
    """Where a new hand made from ``hand`` goes: SPACING to the right of it (or of its rig)."""
    anchor = hand.parent if hand.parent is not None else hand
    return np.array(anchor.matrix_world.translation) + np.array([SPACING, 0.0, 0.0])


def photo_slot() -> np.ndarray:
    """Where the next photo's camera goes: PHOTO_SPACING along X per photo camera so far."""
    count = sum(PHOTO_SIZE in o for o in bpy.data.objects if o.type == "CAMERA")
    return np.array([PHOTO_SPACING * count, 0.0, 0.0])


def look_through(cam: bpy.types.Object) -> None:
    """Make a photo camera the scene's, with the photo's size as the render size (so camera
    view shows the whole photo, not a 16:9 crop of it)."""
    scene = bpy.context.scene
    scene.camera = cam
    if PHOTO_SIZE in cam:
        w, h = cam[PHOTO_SIZE]
        scene.render.resolution_x, scene.render.resolution_y = int(w), int(h)
        scene.render.resolution_percentage = 100


def create_camera(name: str, K: np.ndarray, width: int, height: int,
                  image: bpy.types.Image | None = None,
                  location: np.ndarray | None = None) -> bpy.types.Object:
    """A camera at ``location`` (default the origin) looking along +Y with the photo's
    intrinsics (and the photo as its background), so the camera view shows a reconstruction
    over its photo."""
    cam = bpy.data.cameras.new(name)
    for attr, value in handdata.camera_lens(K, width, height).items():
        setattr(cam, attr, value)
    cam.sensor_fit = "HORIZONTAL"
    if image is not None:
        cam.show_background_images = True
        bg = cam.background_images.new()
        bg.image, bg.frame_method = image, "CROP"
    obj = bpy.data.objects.new(name, cam)
    obj.rotation_euler = (math.pi / 2, 0.0, 0.0)
    if location is not None:
        obj.location = [float(x) for x in location]
    obj[PHOTO_SIZE] = [int(width), int(height)]
    bpy.context.scene.collection.objects.link(obj)
    return obj


def remove_objects(objects: list[bpy.types.Object]) -> None:
    """Delete objects and their (now unused) data: the undo of create_hand/create_camera."""
    owners = {"MESH": bpy.data.meshes, "ARMATURE": bpy.data.armatures,
              "CAMERA": bpy.data.cameras}
    for obj in objects:
        kind, data = obj.type, obj.data
        bpy.data.objects.remove(obj)
        if data is not None and data.users == 0 and kind in owners:
            owners[kind].remove(data)


# ---------------------------------------------------------------------------- reading

def _co(data, n: int) -> np.ndarray:
    out = np.empty(n * 3, np.float32)
    data.foreach_get("co", out)
    return out.reshape(n, 3)


# modifiers that change the topology (Blender's "Generate" group): left out when operators
# read a hand, so a Subdivision modifier never stands in their way
GENERATE_MODIFIERS = {"ARRAY", "BEVEL", "BOOLEAN", "BUILD", "DECIMATE", "EDGE_SPLIT", "MASK",
                      "MIRROR", "MULTIRES", "NODES", "REMESH", "SCREW", "SKIN", "SOLIDIFY",
                      "SUBSURF", "TRIANGULATE", "WELD", "WIREFRAME"}


@contextmanager
def base_mesh(obj: bpy.types.Object):
    """Within it, the hand evaluates (and exports) without its topology-changing modifiers:
    the backend's vertices, posed by the rig and its other deformers."""
    hidden = [m for m in obj.modifiers if m.show_viewport and m.type in GENERATE_MODIFIERS]
    for m in hidden:
        m.show_viewport = False
    if hidden:
        bpy.context.view_layer.update()
    try:
        yield
    finally:
        for m in hidden:
            m.show_viewport = True
        if hidden:
            bpy.context.view_layer.update()


def displayed_vertices(obj: bpy.types.Object) -> np.ndarray:
    """Object-local vertices of the base mesh as shown: shape keys mixed and the rig's pose
    applied (base_mesh: without subdivision)."""
    if obj.mode == "EDIT":
        obj.update_from_editmode()
    with base_mesh(obj):
        evaluated = obj.evaluated_get(bpy.context.evaluated_depsgraph_get())
        mesh = evaluated.to_mesh()
        try:
            if len(mesh.vertices) != len(obj.data.vertices):
                raise ValueError("a modifier changes the vertex count: disable it first")
            return _co(mesh.vertices, len(mesh.vertices))
        finally:
            evaluated.to_mesh_clear()


def selected_vertices(obj: bpy.types.Object) -> np.ndarray:
    if obj.mode == "EDIT":
        obj.update_from_editmode()
    sel = np.zeros(len(obj.data.vertices), bool)
    obj.data.vertices.foreach_get("select", sel)
    return sel


def bone_matrices(hand: bpy.types.Object, topo: HandTopology) -> np.ndarray:
    """Per joint, the pose deformation (posed @ rest^-1) in the hand's own frame."""
    rig = rig_of(hand)
    mats = np.tile(np.eye(4), (topo.num_joints, 1, 1))
    if rig is None:
        return mats
    to_rig = rig.matrix_world.inverted() @ hand.matrix_world
    from_rig = to_rig.inverted()
    for j, name in enumerate(topo.joint_names):
        pb = rig.pose.bones.get(name)
        if pb is not None:
            m = from_rig @ pb.matrix @ pb.bone.matrix_local.inverted() @ to_rig
            mats[j] = np.array(m)
    return mats


def rig_keypoints(hand: bpy.types.Object, topo: HandTopology, only_selected: bool = False
                  ) -> tuple[np.ndarray, np.ndarray | None]:
    """The posed rig's 21 keypoints in the hand's frame, and the mask of keypoints that the
    selected bones pin (None: all)."""
    rig = rig_of(hand)
    if rig is None:
        raise ValueError(f"'{hand.name}' has no armature: create hands with HHMR")
    missing = [n for n in topo.joint_names if n not in rig.pose.bones]
    if missing:
        raise ValueError(f"the armature lacks the bones {missing[:4]}...: not an HHMR rig")
    m = hand.matrix_world.inverted() @ rig.matrix_world
    heads = {pb.name: list(m @ pb.head) for pb in rig.pose.bones}
    tails = {pb.name: list(m @ pb.tail) for pb in rig.pose.bones}
    kp = topo.keypoints_from_bones(heads, tails)
    if not only_selected:
        return kp, None
    chosen = [pb.name for pb in rig.pose.bones if _bone_selected(pb)]
    return kp, topo.keypoint_mask(chosen)


def _bone_selected(pb: bpy.types.PoseBone) -> bool:
    sel = getattr(pb, "select", None)  # Blender 5.0 moved selection onto the pose bone
    return bool(pb.bone.select if sel is None else sel)


# ---------------------------------------------------------------------------- shape keys

def ours(obj: bpy.types.Object) -> list[str]:
    return [h.key_name for h in obj.hhmr.hypotheses]


def apply_hypotheses(obj: bpy.types.Object, hset: HypothesisSet,
                     pose: np.ndarray | None = None,
                     weights: np.ndarray | None = None,
                     topo: HandTopology | None = None) -> list[str]:
    """Put hypotheses on ``obj`` as shape keys hyp_00.. (best first, shown), replacing the
    previous ones, all or nothing. The user's own keys are not touched. With ``pose`` and
    ``weights`` the hypotheses are in posed space and are stored unposed, under the rig.

    With the backend's solved rig (``hset.rig``) and the backend's ``topo``, each key
    holds the hypothesis's rest-space mesh and the hypothesis keeps its pose: showing it
    poses the rig, so that key and pose reproduce the hypothesis."""
    hset.check(len(obj.data.vertices))
    if obj.mode != "OBJECT":  # edit mode would overwrite new keys when it is left
        _set_mode(obj, "OBJECT")
    verts = hset.vertices
    rig = rig_of(obj)
    # the same test pose_rig makes: a rig lacking one of the backend's bones (renamed, from
    # another version) gets posed meshes as keys, as for a backend without poses
    rigged = hset.rig is not None and topo is not None and rig is not None \
        and topo.num_joints == RIG_BONES \
        and all(b in rig.pose.bones for b in topo.joint_names)
    bones = tuple(topo.joint_names) if rigged else ()
    if rigged:
        weights = skin_weights(obj, topo)
        verts = np.stack([handdata.unpose(v, weights, m)
                          for v, m in zip(hset.vertices, hset.rig.transforms, strict=True)])
        poses = [bone_pose(m, h, t, topo.parents) for m, h, t in
                 zip(hset.rig.transforms, hset.rig.heads, hset.rig.tails, strict=True)]
    elif pose is not None:
        verts = handdata.unpose(verts, weights, pose)
    if not np.isfinite(verts).all():
        raise ValueError("the rig's pose cannot be undone for these vertices")
    if obj.data.shape_keys is None:
        obj.shape_key_add(name=BASIS, from_mix=False)
    token = secrets.token_hex(4)
    temp = [f"hhmr_new_{token}_{i}" for i in range(len(hset))]
    try:
        for name, co in zip(temp, verts, strict=True):
            kb = obj.shape_key_add(name=name, from_mix=False)
            _write_key(kb, np.ascontiguousarray(co, np.float32).ravel())
            kb.value = 0.0
            kb.relative_key = obj.data.shape_keys.key_blocks[0]
    except BaseException:
        _remove_keys(obj, temp)
        raise
    _remove_keys(obj, ours(obj))
    blocks = obj.data.shape_keys.key_blocks
    final = hypotheses.names(len(hset))
    for t, name in zip(temp, final, strict=True):
        blocks[t].name = name
    final = [blocks[i].name for i in range(len(blocks) - len(hset), len(blocks))]
    obj.hhmr.hypotheses.clear()
    obj.hhmr.bones = ",".join(bones) if rigged else ""
    for i, (name, score) in enumerate(zip(final, hset.scores, strict=True)):
        item = obj.hhmr.hypotheses.add()
        item.key_name, item.score, item.op = name, float(score), hset.op
        item.central = hset.central_first and i == 0
        if rigged:
            quats, locs = poses[i]
            item.has_pose = True
            item.pose_rotation, item.pose_location = quats.tolist(), locs.tolist()
            item.rest_head = hset.rig.heads[i].tolist()
            item.rest_tail = hset.rig.tails[i].tolist()
    obj.hhmr.active_index = 0  # shows the first (central, else best scored)
    show(obj, final[0])
    obj.data.update()
    return final


def bone_rest(head: np.ndarray, tail: np.ndarray) -> np.ndarray:
    """A bone's rest matrix (armature space, 4x4) for its head and tail with roll 0, as
    Blender builds it (Y along the bone)."""
    m = np.eye(4)
    axis = Vector(np.asarray(tail, float) - np.asarray(head, float)).normalized()
    m[:3, :3] = np.array(bpy.types.Bone.MatrixFromAxisRoll(axis, 0.0))
    m[:3, 3] = head
    return m


def bone_pose(transforms: np.ndarray, heads: np.ndarray, tails: np.ndarray,
              parents: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Pose-bone quaternions [J, 4] and locations [J, 3] (matrix_basis) that make Blender's
    armature deform with the skinning ``transforms`` [J, 4, 4] (armature frame), for rest
    bones at ``heads``/``tails``. A pose bone deforms by D_j = D_parent B_j basis_j B_j^-1
    (B_j its rest matrix), so basis_j = B_j^-1 D_parent^-1 D_j B_j; with the rest skeleton at
    the hypothesis's own joints a finger bone's location comes out zero."""
    quats, locs = np.zeros((len(parents), 4)), np.zeros((len(parents), 3))
    for j in range(len(parents)):
        rest = bone_rest(heads[j], tails[j])
        parent = transforms[parents[j]] if parents[j] >= 0 else np.eye(4)
        basis = np.linalg.inv(rest) @ np.linalg.inv(parent) @ transforms[j] @ rest
        quats[j] = Matrix(basis[:3, :3].tolist()).to_quaternion()
        locs[j] = basis[:3, 3]
    return quats, locs


def _write_key(kb: bpy.types.ShapeKey, co: np.ndarray) -> None:
    kb.data.foreach_set("co", co)


def _remove_keys(obj: bpy.types.Object, key_names: list[str]) -> None:
    keys = obj.data.shape_keys
    if keys is None:
        return
    for name in key_names:
        kb = keys.key_blocks.get(name)
        if kb is not None:
            obj.shape_key_remove(kb)


def show(obj: bpy.types.Object, name: str | None) -> None:
    """Only hypothesis ``name`` on (value 1), the other hypotheses off; user keys untouched.
    A hypothesis with a solved rig also poses the rig (keyed when the scene's Key pose is
    on)."""
    keys = obj.data.shape_keys
    if keys is None:
        return
    names = [kb.name for kb in keys.key_blocks]
    for key, value in hypotheses.values_to_show(names, ours(obj), name).items():
        keys.key_blocks[key].value = value
    if name in names:
        obj.active_shape_key_index = names.index(name)
    item = next((h for h in obj.hhmr.hypotheses if h.key_name == name), None)
    if item is not None and item.has_pose:
        pose_rig(obj, stored_pose(item))


def stored_pose(item) -> tuple[np.ndarray, ...]:
    """A hypothesis's rig: rest heads and tails, pose quaternions and locations."""
    return (np.array(item.rest_head), np.array(item.rest_tail), np.array(item.pose_rotation),
            np.array(item.pose_location))


def pose_rig(obj: bpy.types.Object, pose: tuple[np.ndarray, ...]) -> None:
    """Set the rig to a hypothesis's rest skeleton (its shape's joints) and pose."""
    rig = rig_of(obj)
    bones = [b for b in obj.hhmr.bones.split(",") if b]
    if rig is None or len(bones) != RIG_BONES or any(b not in rig.pose.bones for b in bones):
        return
    heads, tails, quats, locs = pose
    set_rest(rig, bones, heads, tails)
    key = bpy.context.scene.hhmr.key_pose
    for j, bone in enumerate(bones):
        pb = rig.pose.bones[bone]
        pb.rotation_mode = "QUATERNION"
        pb.rotation_quaternion = quats[j].tolist()
        pb.location = locs[j].tolist()
        pb.scale = (1.0, 1.0, 1.0)
        if key:
            pb.keyframe_insert("rotation_quaternion", group=bone)
            pb.keyframe_insert("location", group=bone)
    rig.update_tag()


def set_rest(rig: bpy.types.Object, bones: list[str], heads: np.ndarray,
              tails: np.ndarray) -> None:
    """Move the rig's rest bones (edit mode, roll 0) where they differ from ``heads`` and
    ``tails``; the active object and its mode are restored."""
    current = np.array([[*rig.data.bones[b].head_local, *rig.data.bones[b].tail_local]
                        for b in bones])
    if np.abs(current - np.concatenate([heads, tails], 1)).max() < 1e-6:
        return
    view_layer = bpy.context.view_layer
    active = view_layer.objects.active
    mode = active.mode if active is not None else "OBJECT"
    hidden = (rig.hide_get(), rig.hide_viewport)  # edit mode needs a visible rig
    try:
        if active is not None and mode != "OBJECT":
            _set_mode(active, "OBJECT")
        rig.hide_set(False)
        rig.hide_viewport = False
        _set_mode(rig, "EDIT")
        for j, bone in enumerate(bones):
            eb = rig.data.edit_bones[bone]
            eb.head, eb.tail, eb.roll = heads[j].tolist(), tails[j].tolist(), 0.0
    finally:
        if rig.mode != "OBJECT":
            _set_mode(rig, "OBJECT")
        rig.hide_set(hidden[0])
        rig.hide_viewport = hidden[1]
        view_layer.objects.active = active
        if active is not None and mode != "OBJECT":
            _set_mode(active, mode)


def delete_hypothesis(obj: bpy.types.Object, index: int) -> None:
    name = obj.hhmr.hypotheses[index].key_name
    _remove_keys(obj, [name])
    obj.hhmr.hypotheses.remove(index)
    obj.hhmr.active_index = min(index, len(obj.hhmr.hypotheses) - 1)


def apply_as_basis(obj: bpy.types.Object, index: int) -> None:
    """Make hypothesis ``index`` the mesh's basis (the reference key and the vertices) and
    drop its key; other keys keep their own coordinates. A hypothesis with a solved rig
    leaves the rig in its rest skeleton and pose, so the basis is its rest-space mesh and the
    hand looks as it did: ready to be posed further."""
    item = obj.hhmr.hypotheses[index]
    name = item.key_name
    pose = stored_pose(item) if item.has_pose else None
    blocks = obj.data.shape_keys.key_blocks
    n = len(obj.data.vertices)
    co = _co(blocks[name].data, n).ravel()
    blocks[0].data.foreach_set("co", co)
    obj.data.vertices.foreach_set("co", co)
    delete_hypothesis(obj, index)
    obj.hhmr.active_index = -1  # the basis shows: no hypothesis highlighted
    show(obj, None)
    if pose is not None:  # after delete_hypothesis, which shows a neighbour
        pose_rig(obj, pose)
    obj.data.update()


def skin_weights(obj: bpy.types.Object, topo: HandTopology) -> np.ndarray:
    """The hand's vertex-group weights [V, J] in joint order."""
    w = np.zeros((len(obj.data.vertices), topo.num_joints), np.float32)
    col = {g.index: topo.joint_names.index(g.name) for g in obj.vertex_groups
           if g.name in topo.joint_names}
    for v in obj.data.vertices:
        for g in v.groups:
            if g.group in col:
                w[v.index, col[g.group]] = g.weight
    return w
