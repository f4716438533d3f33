"""Why `hhmr serve` samples on its main thread and answers `info` without torch: the median
`reconstruct` stages of one photo (n=8, 10 steps, rig poses), each case in a fresh process
with torch's default threads:

- main: everything on the main thread (what the server does now);
- main, after a torch op on another thread that lives on: as when the socket thread built
  `info`'s topology (each thread that runs a parallel op gets an OpenMP pool of its own, and
  with more OpenMP threads than cores libgomp all but stops spin-waiting);
- second thread: sampling on a thread other than the main one, after the main thread's
  warm-up (the server's old compute thread).

    python research/openmp_threads.py [PHOTO] [--repeats 5] > weights/eval/openmp_threads.json
"""

import argparse
import json
import statistics
import subprocess
import sys
import threading

CASES = ("main", "main_after_other_thread_op", "second_thread")


def measure(case: str, photo: str, repeats: int) -> dict:
    import numpy as np
    import torch
    from hhmr.reconstruct import reconstruct
    from hhmr.sampling import HandDiffusionPipeline
    from PIL import Image

    pipe = HandDiffusionPipeline.from_pretrained(None)
    pipe.warm_up()
    rgb = np.asarray(Image.open(photo).convert("RGB"))
    stages: dict[str, list[float]] = {"sample_ms": [], "pose_ms": []}

    def run() -> None:
        for i in range(repeats + 1):  # the first builds this batch size's trace
            timings = reconstruct(pipe, rgb, n=8, steps=10, pose=True)[0][1].timings
            for k in stages:
                if i:
                    stages[k].append(timings[k])

    done, ran = threading.Event(), threading.Event()

    def other_thread_op() -> None:
        """What the socket thread used to do for each `info`; the thread lives on, as the
        socket thread does (a pool goes when its thread ends)."""
        from hhmr.server import hand_topology

        hand_topology(pipe.hand)
        ran.set()
        done.wait()

    if case == "main_after_other_thread_op":
        other = threading.Thread(target=other_thread_op)
        other.start()
        ran.wait()
    if case == "second_thread":
        t = threading.Thread(target=run)
        t.start()
        t.join()
    else:
        run()
    done.set()
    return {"case": case, "threads": torch.get_num_threads(),
            **{k: round(statistics.median(v), 1) for k, v in stages.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("photo", nargs="?",
                    default="../shared/data/real_photos/freihand_style/119.jpg")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)  # one case, in a child
    args = ap.parse_args()
    if args.case:
        print(json.dumps(measure(args.case, args.photo, args.repeats)))
        return
    rows = []
    for case in CASES:
        out = subprocess.run([sys.executable, __file__, args.photo, "--repeats",
                              str(args.repeats), "--case", case], check=True,
                             capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(rows[-1], file=sys.stderr)
    print(json.dumps({"command": "python research/openmp_threads.py > "
                                 "weights/eval/openmp_threads.json",
                      "photo": args.photo, "n": 8, "steps": 10, "results": rows}, indent=1))


if __name__ == "__main__":
    main()
