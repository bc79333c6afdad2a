"""Build the test scene with Blender itself: run by the ``bpy`` interpreter, not by pytest.

``PYTHON_WITH_BPY blender_scene.py DIR/scene.blend`` writes ``DIR/textures/checker.png`` (a
checker made by Blender) and a scene referencing it by a relative path (``//textures/...``):
a textured cube, a sun, a world light, and two cameras, ``CAM_wide`` (active) and
``CAM_main``. Cycles on the CPU, 8 samples, frames 1-3 with the cube turning.

Variants (options after the path), for the scene steps' tests:

* ``--texture-dir DIR``: the texture is written to ``DIR/checker.png`` and referenced by
  that absolute path, as a scene saved on an artist's machine is;
* ``--engine ID``: another render engine (e.g. ``BLENDER_EEVEE_NEXT``);
* ``--library``: the cube is linked from a library, ``DIR/lib/props.blend`` (its material
  and texture in the library, the texture referenced as ``//../textures/checker.png``);
* ``--compress``: the .blend is saved compressed (zstd, as Blender 3+ does);
* ``--extra-image PATH`` (repeatable): an image datablock (kept by a fake user) whose file
  is ``PATH`` as given, e.g. a Windows path; no file is written for it;
* ``--sequence N``: an image sequence of N frames, ``DIR/seq/frame_0001.png`` ... (tiny
  PNGs), its datablock kept by a fake user (traced as a sequence, not rendered), and the
  scene's frames 1-N.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import bpy  # type: ignore[import-not-found]

CHECKER = 32


def write_checker(texture: Path) -> None:
    """An orange and blue checker PNG, made by Blender."""
    texture.parent.mkdir(parents=True, exist_ok=True)
    image = bpy.data.images.new("checker", CHECKER, CHECKER)
    pixels: list[float] = []
    for y in range(CHECKER):
        for x in range(CHECKER):
            on = (x // 8 + y // 8) % 2
            pixels += [0.9, 0.5, 0.1, 1.0] if on else [0.1, 0.3, 0.9, 1.0]
    image.pixels = pixels
    image.filepath_raw = str(texture)
    image.file_format = "PNG"
    image.save()
    bpy.data.images.remove(image)


def write_sequence(folder: Path, frames: int) -> None:
    """``folder/frame_0001.png`` ... and an image datablock using them as a sequence."""
    folder.mkdir(parents=True, exist_ok=True)
    for frame in range(1, frames + 1):
        image = bpy.data.images.new(f"frame{frame}", 4, 4)
        image.pixels = [frame / frames, 0.2, 0.4, 1.0] * 16
        image.filepath_raw = str(folder / f"frame_{frame:04d}.png")
        image.file_format = "PNG"
        image.save()
        bpy.data.images.remove(image)
    sequence = bpy.data.images.load(str(folder / "frame_0001.png"))
    sequence.name = "plate"
    sequence.source = "SEQUENCE"
    sequence.use_fake_user = True


def textured_cube(texture: Path) -> Any:
    """A cube with the texture as its base colour, turning between frames 1 and 3."""
    bpy.ops.mesh.primitive_cube_add()
    cube = bpy.context.active_object
    cube.name = "Cube"
    material = bpy.data.materials.new("Checker")
    material.use_nodes = True
    nodes = material.node_tree.nodes
    node = nodes.new("ShaderNodeTexImage")
    node.image = bpy.data.images.load(str(texture))
    material.node_tree.links.new(
        node.outputs["Color"], nodes["Principled BSDF"].inputs["Base Color"]
    )
    cube.data.materials.append(material)
    for frame, angle in ((1, 0.0), (3, 0.8)):
        cube.rotation_euler = (0.0, 0.0, angle)
        cube.keyframe_insert("rotation_euler", frame=frame)
    return cube


def build_library(library: Path, texture: Path) -> None:
    """``library`` holding the textured cube (and nothing else)."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    textured_cube(texture)
    library.parent.mkdir(parents=True, exist_ok=True)
    bpy.ops.wm.save_as_mainfile(filepath=str(library), relative_remap=True)


def main() -> None:
    """Build and save the scene named on the command line."""
    parser = argparse.ArgumentParser()
    parser.add_argument("blend", type=Path)
    parser.add_argument("--texture-dir", type=Path)
    parser.add_argument("--engine", default="CYCLES")
    parser.add_argument("--library", action="store_true")
    parser.add_argument("--compress", action="store_true")
    parser.add_argument("--extra-image", action="append", default=[])
    parser.add_argument("--sequence", type=int, default=0)
    args = parser.parse_args(sys.argv[1:])
    blend = args.blend.resolve()
    texture = (args.texture_dir or blend.parent / "textures").resolve() / "checker.png"
    bpy.ops.wm.read_factory_settings(use_empty=True)
    write_checker(texture)
    if args.library:
        library = blend.parent / "lib" / "props.blend"
        build_library(library, texture)
        bpy.ops.wm.read_factory_settings(use_empty=True)
        with bpy.data.libraries.load(str(library), link=True, relative=True) as (_src, dst):
            dst.objects = ["Cube"]
        bpy.context.scene.collection.objects.link(dst.objects[0])
    else:
        textured_cube(texture)
    scene = bpy.context.scene
    for i, path in enumerate(args.extra_image):
        image = bpy.data.images.new(f"extra{i}", 4, 4)
        image.source = "FILE"
        image.filepath = path
        image.use_fake_user = True

    if args.sequence:
        write_sequence(blend.parent / "seq", args.sequence)

    bpy.ops.object.light_add(type="SUN", location=(3, -2, 6), rotation=(0.6, 0.3, 0.4))
    bpy.context.active_object.data.energy = 4
    world = bpy.data.worlds.new("World")
    world.use_nodes = True
    world.node_tree.nodes["Background"].inputs["Strength"].default_value = 0.6
    scene.world = world
    bpy.ops.object.camera_add(location=(6, -6, 4.5), rotation=(1.1, 0, 0.785))
    bpy.context.active_object.name = "CAM_main"
    bpy.ops.object.camera_add(location=(0, -30, 0), rotation=(1.5708, 0, 0))
    bpy.context.active_object.name = "CAM_wide"
    scene.camera = bpy.context.active_object

    scene.render.engine = args.engine
    if args.engine == "CYCLES":
        scene.cycles.device = "CPU"
        scene.cycles.samples = 8
    scene.frame_start, scene.frame_end = 1, max(3, args.sequence)
    bpy.ops.wm.save_as_mainfile(
        filepath=str(blend), relative_remap=args.texture_dir is None, compress=args.compress
    )


if __name__ == "__main__":
    main()
