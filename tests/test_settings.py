from __future__ import annotations

import pytest

from collector.core.settings import SettingsError, load_settings


def test_defaults_match_the_documented_ones():
    s = load_settings({})
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert s.database_url == "postgresql://postgres@127.0.0.1:5432/logs"
    assert (s.stream_key, s.consumer_group, s.batch_size) == ("logs:stream", "log_workers", 100)
    assert s.celery_broker_url == s.redis_url


@pytest.mark.parametrize("env, name", [({"BATCH_SIZE": "zero"}, "BATCH_SIZE"), ({"BATCH_SIZE": "0"}, "BATCH_SIZE"),
                                       ({"REDIS_URL": "http://x"}, "REDIS_URL"),
                                       ({"DRAIN_INTERVAL": "nan"}, "DRAIN_INTERVAL"),
                                       ({"STREAM_KEY": " "}, "STREAM_KEY")])
def test_bad_values_name_the_variable(env, name):
    with pytest.raises(SettingsError, match=name):
        load_settings(env)


def test_key_prefix_namespaces_every_redis_key():
    s = load_settings({"KEY_PREFIX": "t1:"})
    assert s.stream == "t1:logs:stream" and s.celery_queue.startswith("t1:") and s.key("x") == "t1:x"
