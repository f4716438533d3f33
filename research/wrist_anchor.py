"""Does re-anchoring a disagreeing world-landmark wrist help the photo fit? The skel2d+world
gate keeps the wrist even when it fails the 3 % test (the net reads wrist-relative joints), so
a wrong wrist shifts every landmark the net sees. The variant moves such a wrist's x, y to
where the keypoints put it (the gate's own scaled orthographic view; its z kept) before the
other landmarks are gated. Both on the same photos, n=1:

    python research/wrist_anchor.py [--root ../shared/data/real_hgcnn_dev] [--limit N]
"""

from __future__ import annotations

import argparse
import json

import hhmr.reconstruct as R
from hhmr.evaluation.photos import evaluate_freihand

PLAIN = R.gate_world


def anchored(kp, world, world_gate, min_agreeing=R.PhotoConfig.min_agreeing):
    if world is not None and world_gate is not None and \
            R.world_residual(kp, world)[0] > world_gate:
        a_mean, b_mean = world[:, :2].mean(0), kp.mean(0)
        a, b = world[:, :2] - a_mean, kp - b_mean
        scale = float((a * b).sum() / max((a * a).sum(), 1e-12))
        world = world.copy()
        world[0, :2] = a_mean + (kp[0] - b_mean) / scale
    return PLAIN(kp, world, world_gate, min_agreeing)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default="../shared/data/real_hgcnn_dev")
    ap.add_argument("--limit", type=int, default=None)
    args = ap.parse_args()
    out = {}
    for name, gate in (("shipped", PLAIN), ("wrist_anchored", anchored)):
        R.gate_world = gate
        r = evaluate_freihand(args.root, modes=("skel2d+world",), limit=args.limit,
                              progress=False)["results"]["skel2d+world"]
        out[name] = {k: r[k] for k in ("samples", "pa_mpjpe_mm", "rr_mpjpe_mm")}
    R.gate_world = PLAIN
    print(json.dumps({"command": "python research/wrist_anchor.py"
                      + (f" --limit {args.limit}" if args.limit else ""), **out}, indent=2))


if __name__ == "__main__":
    main()
