"""The ground-truth cache: same ids as a fresh tokenization, and bounded in bytes, not only entries."""

from __future__ import annotations

from reward_server.engine.tokenization import TruthTokenCache, encode_flat


def test_cache_is_bounded_in_bytes_and_returns_fresh_ids(default_table) -> None:
    cache = TruthTokenCache(default_table, max_entries=1000, max_bytes=300_000)
    long_truths = [f"caption {i}: " + "a small dog sleeps on a red sofa. " * 300 for i in range(40)]
    for truth in long_truths:
        (ids,) = cache.get_many([truth])
        expected, _ = encode_flat(default_table, [truth])
        assert ids.tolist() == expected.tolist()
        assert cache.bytes <= cache.max_bytes
    assert len(cache) < len(long_truths)  # the count bound (1000) never bit: the byte bound did
    (again,) = cache.get_many([long_truths[-1]])  # the most recent survives
    assert cache.hits >= 1 and again.tolist() == encode_flat(default_table, [long_truths[-1]])[0].tolist()
