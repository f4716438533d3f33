"""`hhmr demo`: hands from the pose prior on the embedded default hand, as OBJ + contact sheet."""

from __future__ import annotations

from pathlib import Path

import torch

from hhmr.data.poses import PosePrior
from hhmr.hand import load_hand_model
from hhmr.io import write_obj
from hhmr.render import contact_sheet, look_rotation, render_mesh


def run_demo(out: Path, num: int = 8, seed: int = 0, size: int = 256) -> dict[str, object]:
    """Sample `num` prior hands (canonical orientation), write OBJ files and one PNG sheet."""
    out.mkdir(parents=True, exist_ok=True)
    model = load_hand_model()
    prior = PosePrior(model, random_orient=False)
    sample = prior.sample(num, seed=seed)
    with torch.no_grad():
        output = model(sample.global_orient, sample.hand_pose, sample.betas)
    faces = model.faces.numpy()
    view = look_rotation(-25, -30)
    images, labels, meshes = [], [], []
    for i, (verts, kps) in enumerate(zip(output.vertices.numpy(), output.joints.numpy(),
                                         strict=True)):
        name = f"prior_{i:02d}_{sample.gestures[i].replace('+', '_')}.obj"
        meshes.append(str(write_obj(out / name, verts, faces,
                                    comment=f"hhmr demo: pose prior sample {i}, seed {seed}")))
        images.append(render_mesh(verts, faces, size=size, rotation=view, keypoints=kps))
        labels.append(f"{i:02d} {sample.gestures[i]}")
    sheet = out / "contact_sheet.png"
    contact_sheet(images, labels, columns=4).save(sheet)
    return {"meshes": meshes, "contact_sheet": str(sheet), "model": model.name,
            "vertices": model.num_vertices, "faces": len(faces)}
