"""Streaming benchmark of the paper: the student's KV cache against recomputing the whole text.

    python benchmarks/stream_bench.py --profile cpu --prefix 4096 --delta 128 --updates 20

Prints the median latency per method, the speed-ups next to the token-ratio limit (L + D) / D,
the largest cosine distance between cached and recomputed embeddings, and the cache size.
``--weights random`` skips training (latency does not depend on the weights).
"""

from __future__ import annotations

import argparse
import os
import sys

# OpenMP threads that spin while waiting stall each small op of a cached update whenever another
# process holds a core (a shared 2-core machine: ~10x slower updates at 2 threads); passive waiting
# costs the large recomputes nothing. Must be set before torch starts its thread pool.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from streamdistill.artifacts import atomic_write_json  # noqa: E402
from streamdistill.profiles import get_profile, parse_sets  # noqa: E402
from streamdistill.registry import stream_encoders  # noqa: E402
from streamdistill.report import stream_bench_text  # noqa: E402
from streamdistill.streambench import stream_benchmark  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default=None, help="scale profile (tiny, cpu, paper)")
    parser.add_argument("--prefix", type=int, help="prefix length L in tokens (default: the profile's)")
    parser.add_argument("--delta", type=int, help="tokens appended per update (default: the profile's)")
    parser.add_argument("--updates", type=int, help="timed updates (default: the profile's)")
    parser.add_argument("--weights", choices=["trained", "random"], default=None,
                        help="the trained stage models, or random ones of the profile's shape (default: trained)")
    parser.add_argument("--growing", action="store_true", help="let the stream grow instead of restarting at L")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a profile setting")
    parser.add_argument("--out", help="also write the figures as JSON")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's, i.e. the cores)")
    parser.add_argument("--verbose", action="store_true", help="print each update's latencies")
    args = parser.parse_args(argv)

    profile = get_profile(args.profile, parse_sets(args.set))
    if args.threads:
        torch.set_num_threads(args.threads)
    longest = (args.prefix or profile.stream_prefix) + (args.delta or profile.stream_delta) * (
        (args.updates or profile.stream_updates) if args.growing else 1)
    encoders, weights = stream_encoders(profile, weights=args.weights,
                                        max_positions=max(profile.max_positions, 2 * longest + 64))
    r = stream_benchmark(profile, prefix=args.prefix, delta=args.delta, updates=args.updates, weights=weights,
                         growing=args.growing, verbose=args.verbose, **encoders)
    print(stream_bench_text(r))
    if args.out:
        atomic_write_json(args.out, r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
