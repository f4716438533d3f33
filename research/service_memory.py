"""The server's memory across repeated fuzz runs: a real `hhmr serve`, `rounds` runs of
`frames` fuzz frames each (hhmr.evaluation.service.fuzz), resident memory after each.

    python research/service_memory.py [--rounds 3] [--frames 4000]
"""

import argparse
import json
import time

from hhmr.evaluation import service as S


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--frames", type=int, default=4000)
    args = ap.parse_args()
    with S.service() as (proc, address):
        rss = [round(S.rss_mb(proc.pid), 1)]
        for seed in range(args.rounds):
            S.fuzz(address, proc.pid, frames=args.frames, seed=seed)
            time.sleep(2.0)  # the last batches end and the queue runs dry
            rss.append(round(S.rss_mb(proc.pid), 1))
    print(json.dumps({"frames_per_round": args.frames, "rss_mb": rss}))


if __name__ == "__main__":
    main()
