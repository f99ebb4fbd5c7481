"""Print the harness's encode throughput for all-MiniLM-L6-v2 against sentence-transformers' own encode.

    python benchmarks/harness_throughput.py --texts 1024      # target: ratio >= 0.9
"""

import argparse
import json

from streamdistill import data, evaluate
from streamdistill.models import MINILM
from streamdistill.profiles import get_profile
from streamdistill.registry import resolve_model

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    model = resolve_model(MINILM, get_profile())
    texts = data.training_texts(limit=args.texts)
    print(json.dumps(evaluate.harness_throughput(model, texts, batch_size=args.batch_size), indent=2))
