"""The shipped open hand against the candidate with its MCP joints at the knuckles
(`tools/build_hand_model.py --knuckles-only`, docs/hand_model.md): the same gestures, the
shipped hand on top.

    python research/knuckles_figure.py [--out docs/images/knuckles.png]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from hhmr.data.poses import GESTURES
from hhmr.hand.open_hand import ASSET, OpenHand
from hhmr.paths import weights_dir
from hhmr.render import contact_sheet, look_rotation, render_mesh

ROOT = Path(__file__).resolve().parents[1]
VIEWS = (("flat_bend", 90, 0), ("fist", 90, 15), ("point", 90, 0), ("fist", 20, -35))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/images/knuckles.png")
    args = ap.parse_args()
    images, labels = [], []
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, str(ROOT / "tools" / "build_hand_model.py"),
                        "--knuckles-only", str(weights_dir() / ASSET), "--out", tmp],
                       check=True, stdout=subprocess.DEVNULL)
        hands = (("shipped, MCP at the webs", OpenHand()),
                 ("candidate, MCP at the knuckles", OpenHand(Path(tmp) / Path(ASSET).name)))
        for label, hand in hands:
            for name, azimuth, elevation in VIEWS:
                gesture = next(g for g in GESTURES if g.name == name)
                pose = hand.joint_limits.from_anatomical(gesture.angles().deg2rad()[None])
                out = hand(hand_pose=pose)
                images.append(render_mesh(out.vertices[0].numpy(), hand.faces.numpy(), 300,
                                          look_rotation(azimuth, elevation),
                                          keypoints=out.joints[0].numpy()))
                labels.append(f"{label}: {name}")
    contact_sheet(images, labels, columns=len(VIEWS)).save(args.out)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
