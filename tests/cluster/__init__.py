"""Tests on a real multi-node Ray: a package, so that its one cluster (``conftest.py``) is stopped after the
last of them instead of running, idle, through the rest of the session."""
