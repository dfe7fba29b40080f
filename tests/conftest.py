"""Test-suite settings: Hypothesis draws the same examples on every run (the suite gates CI,
so a property test must not pass or fail by the luck of the draw); `HYPOTHESIS_PROFILE=explore`
draws fresh examples instead."""

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("explore", deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
