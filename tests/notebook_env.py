"""A pytest plugin for `make test`: the notebooks run under nbval beside the unit tests, in one
xdist session (``-p tests.notebook_env``).

Each notebook's kernel starts with the tiny profile and, when
``STREAMDISTILL_TEST_CACHE`` names one, the caches the unit tests share, so each tiny stage is built
once for both (``artifacts.cached`` locks a build; a second process waits for it). The environment
is set only while nbval starts a notebook's kernel: a unit test in the same worker never sees it.
With ``--dist loadfile`` each notebook's cells run in order on one worker.
"""

from __future__ import annotations

import os

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    if item.path.suffix != ".ipynb":
        yield
        return
    env = {"STREAMDISTILL_PROFILE": "tiny"}
    cache = os.environ.get("STREAMDISTILL_TEST_CACHE")
    if cache:
        env |= {"STREAMDISTILL_ARTIFACTS": os.path.join(cache, "artifacts"),
                "STREAMDISTILL_RESULTS": os.path.join(cache, "results")}
    old = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
