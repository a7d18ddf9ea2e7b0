"""The ``redis_server`` fixture: a throwaway redis-server per test (hyperrag.testing.redis_server).

Skips with the reason when redis-server or redis-py is missing (scripts/install.sh
installs both).
"""
import shutil

import pytest

from hyperrag.testing.redis_server import RedisServer


@pytest.fixture
def redis_server(tmp_path):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (scripts/install.sh installs it)")
    pytest.importorskip("redis", reason="redis-py is not installed (pip install 'dv-hyperrag[remote]')")
    server = RedisServer(tmp_path)
    yield server
    server.stop()
