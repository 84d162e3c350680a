"""``python -m bench`` (``tox -e bench``, ``ci/bench``): what the shim costs, side by side with
the alternatives, measured in one run on this machine and written into BENCHMARKS.md.

Every figure is a ratio against a baseline measured in the same run, with samples of the
alternatives interleaved (direct, spy, shim, direct, spy, shim, ...) so drift of a shared
machine hits all of them alike; the table reports medians.  No test asserts on time.
"""
