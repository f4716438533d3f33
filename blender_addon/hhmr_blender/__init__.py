"""HHMR: hand meshes from a photo, a posed armature, a selection or nothing, as shape keys.

The heavy lifting runs in the HHMR backend (a separate process, reached over ZeroMQ); this
add-on needs only numpy, pyzmq and msgpack. Blender 4.2+ reads blender_manifest.toml;
Blender 3.4-4.1 read ``bl_info`` and get pyzmq/msgpack from the bundled wheels (deps.py).
"""

bl_info = {
    "name": "HHMR hand mesh recovery",
    "author": "HHMR developers",
    "version": (0, 1, 0),
    "blender": (3, 4, 0),
    "location": "3D View > Sidebar > Hand",
    "description": "Hand meshes from photos, armatures, selections or nothing",
    "category": "Mesh",
}



def register() -> None:
    from . import deps

    deps.ensure()  # before anything imports zmq or msgpack
    import bpy

    from . import operators, panels, props

    props.register()
    for cls in (*operators.CLASSES, *panels.CLASSES):
        bpy.utils.register_class(cls)
    from . import runner

    for handlers in (bpy.app.handlers.undo_post, bpy.app.handlers.redo_post):
        handlers.append(runner.after_undo)


def unregister() -> None:
    import bpy

    from . import local_backend, operators, panels, props, runner

    if runner.STATE.job is not None:
        runner.cancel()
        runner.STATE.job.close()
        runner.STATE.job = None
    if bpy.app.timers.is_registered(runner.poll):
        bpy.app.timers.unregister(runner.poll)
    local_backend.BACKEND.stop()
    for handlers in (bpy.app.handlers.undo_post, bpy.app.handlers.redo_post):
        if runner.after_undo in handlers:
            handlers.remove(runner.after_undo)
    for cls in reversed((*operators.CLASSES, *panels.CLASSES)):
        bpy.utils.unregister_class(cls)
    props.unregister()
