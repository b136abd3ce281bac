"""The run: the job's lifetime, the worker pool, pacing, assembly and publishing results.

May import ``net``, ``tables`` and ``state`` as well as the leaves.
"""
