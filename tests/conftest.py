"""Test-suite settings: Hypothesis draws the same examples on every run (the suite gates CI,
so a property test must not pass or fail by the luck of the draw); `HYPOTHESIS_PROFILE=explore`
draws fresh examples instead."""

import os

import pytest
from hypothesis import settings

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("explore", deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def fresh_dynamo():
    """A test of compiled code starts and ends with Dynamo's caches and counters empty, and
    draws from torch's global generator seeded with 0 (restored afterwards): its recompile
    counts and masks do not depend on the tests before it."""
    import torch
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        yield
    torch._dynamo.reset()
