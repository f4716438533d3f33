"""The smoothing grid behind `VideoOptions.smoothing`: synthetic motion (hhmr.evaluation.video)
at gestures every 10 and every 5 frames, per-frame PA-MPJPE, acceleration error and lag for
each smoothing strength.

    python research/video_smoothing.py > weights/eval/video_smoothing.json   (about 5 minutes)
"""

from __future__ import annotations

import json
import sys

from hhmr.evaluation.video import HOLDS, evaluate_synthetic
from hhmr.sampling import HandDiffusionPipeline

GRID = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 40.0)


def main() -> None:
    pipe = HandDiffusionPipeline.from_pretrained()
    pipe.warm_up((1,))
    settings = tuple((f"smoothing {s:g}", {"smoothing": s}) for s in GRID)
    out = {"command": "python research/video_smoothing.py", "sequences": 4, "frames": 90,
           "grid": [{"hold": h, "results": evaluate_synthetic(pipe, 4, 90, h, settings=settings,
                                                              progress=False)}
                    for h in HOLDS]}
    json.dump(out, sys.stdout, indent=2)


if __name__ == "__main__":
    main()
