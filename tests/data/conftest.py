"""tests/data holds inputs for the tests, not tests: keep nbval (--nbval-lax in addopts) from running its notebooks."""

collect_ignore_glob = ["*.ipynb"]
