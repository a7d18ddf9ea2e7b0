"""Test oracles for HyperRAG, not serving code.

Nothing here is used by the serving path (``hyperrag.cache``, the controller,
the engines). The package holds slow, obviously-correct twins of the native
structures that the tests and benchmarks compare the real ones against, and
the fixtures they run against:

- ``hyperrag.testing.reference_tree``: ``ReferenceTree`` and
  ``ReferenceCostProfile``, a pure-Python ``KnowledgeTree`` with the same
  semantics (docs/cache_api.md), the oracle of tests/test_tree_stateful.py.
- ``hyperrag.testing.redis_server``: ``RedisServer``, a throwaway redis-server
  for the remote-tier tests and benchmarks.
"""
