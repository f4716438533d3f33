"""How sure is the landmark network of the gloved hand a box is drawn around? (docs/photos.md)

`wild/test4`'s upper hand (a black glove, side-on, curled round a branch) is not found with a
box. For a few boxes around it this prints the landmark network's best presence over the
search `LandmarkNet` ships (`ANGLES` x `SCALES`; then on the crop its keypoints give, as the
box search refines), over a finer one (15-degree steps, scales
0.6-1.5), and over the finer one on the photo inverted (a dark glove turned light); and for
that last crop, the presence on the crop its own keypoints give (`LandmarkNet.tracking_crop`,
as MediaPipe tracks and the box search refines). The lower glove, which a box finds, is the
control.

    python research/box_presence.py [--photo ../shared/data/real_photos/wild/test4.jpg]
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
from hhmr.reconstruct import LandmarkNet, landmark_net
from PIL import Image

BOXES = ((200, 330, 700, 760), (150, 300, 720, 880), (100, 250, 750, 950), (0, 300, 700, 900),
         (250, 330, 680, 720))
CONTROL = (470, 720, 1030, 1600)  # the lower glove, which a box finds (tests/test_reconstruct.py)
FINE_ANGLES = tuple(range(0, 360, 15))
FINE_SCALES = (0.6, 0.8, 1.0, 1.25, 1.5)


def best(net: LandmarkNet, rgb: np.ndarray, box, angles, scales):
    """The crop with the highest presence: (presence, keypoints [21, 2])."""
    kp, _, presence, _, _ = net.search(rgb, box, angles, scales)
    return presence, kp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photo", default="../shared/data/real_photos/wild/test4.jpg")
    args = ap.parse_args()
    rgb = np.ascontiguousarray(np.asarray(Image.open(args.photo).convert("RGB")))
    inverted = np.ascontiguousarray(255 - rgb)
    net = landmark_net()
    rows = []
    for box in (*BOXES, CONTROL):
        shipped, kp = best(net, rgb, box, LandmarkNet.ANGLES, LandmarkNet.SCALES)
        shipped_tracked = net._run(rgb, *net.tracking_crop(kp))[2]
        fine, _ = best(net, rgb, box, FINE_ANGLES, FINE_SCALES)
        inv, kp = best(net, inverted, box, FINE_ANGLES, FINE_SCALES)
        tracked = net._run(inverted, *net.tracking_crop(kp))[2]
        rows.append({"box": box, "hand": "lower (control)" if box == CONTROL else "upper",
                     "shipped_search": round(shipped, 3),
                     "shipped_then_tracked": round(shipped_tracked, 3),
                     "fine_search": round(fine, 3), "inverted_fine_search": round(inv, 3),
                     "inverted_then_tracked": round(tracked, 3)})
    print(json.dumps({"photo": args.photo, "min_presence": LandmarkNet.MIN_PRESENCE,
                      "boxes": rows,
                      "command": " ".join(["python research/box_presence.py", *sys.argv[1:]])},
                     indent=2))


if __name__ == "__main__":
    main()
