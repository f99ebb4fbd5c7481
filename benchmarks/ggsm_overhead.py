"""Print GG-SM's per-step training overhead against plain bidirectional training, and tokens/s.

    python benchmarks/ggsm_overhead.py --profile cpu      # target: overhead <= 15 %
"""

import argparse
import json

from streamdistill.pipeline import ggsm_overhead

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps(ggsm_overhead(args.profile, args.steps, args.repeats), indent=2))
