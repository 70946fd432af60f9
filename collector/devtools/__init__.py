"""Tools for running the collector's processes locally: used by `make run`, the bench and the tests.

Nothing in the service itself imports this package.
"""
