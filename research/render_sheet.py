"""A contact sheet of training renders with their 2D keypoints and visible-skin masks
(docs/images/renders.jpg): do they read as hands?

    python research/render_sheet.py [--out docs/images/renders.jpg] [--count 24]
"""

from __future__ import annotations

import argparse

import numpy as np
from hhmr.data.renders import render_batch
from hhmr.hand.topology import KEYPOINT_PARENTS
from hhmr.render import contact_sheet
from PIL import Image, ImageDraw


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/images/renders.jpg")
    ap.add_argument("--count", type=int, default=18)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    rs = render_batch(args.count, args.seed)
    tiles, labels = [], []
    for i in range(args.count):
        photo = Image.fromarray(rs.images[i])
        labelled = photo.copy()
        d = ImageDraw.Draw(labelled)
        kp = rs.keypoints[i]
        for j, p in enumerate(KEYPOINT_PARENTS):
            if p >= 0:
                d.line([tuple(kp[p]), tuple(kp[j])], fill=(255, 255, 0), width=1)
        edge = np.asarray(Image.fromarray(rs.masks[i].astype(np.uint8) * 255)
                          .resize((224, 224)))
        tint = np.asarray(labelled).copy()
        tint[edge > 0] = (0.6 * tint[edge > 0] + [0, 100, 0]).astype(np.uint8)
        tiles += [photo, Image.fromarray(tint)]
        labels += [f"render {i}", "keypoints + mask"]
    contact_sheet(tiles, labels, columns=6).save(args.out, quality=85)
    print(args.out)


if __name__ == "__main__":
    main()
