from edge.cache.hot import Lru


def test_least_recently_used_entries_leave_first() -> None:
    lru: Lru[str, int] = Lru(max_entries=2)
    lru.put("a", 1)
    lru.put("b", 2)
    assert lru.get("a") == 1  # "b" is now the oldest
    lru.put("c", 3)
    assert (lru.get("a"), lru.get("b"), lru.get("c")) == (1, None, 3)


def test_weight_bound_and_oversized_values() -> None:
    lru: Lru[str, bytes] = Lru(max_entries=100, max_weight=100, weigh=len)
    lru.put("big", b"x" * 30)  # over a quarter of the budget: not kept
    assert lru.get("big") is None
    for i in range(5):
        lru.put(str(i), b"x" * 25)
    assert len(lru) == 4  # 4 x 25 fills the budget; the oldest went
    assert lru.get("0") is None and lru.get("4") is not None
    lru.pop("4")
    lru.put("5", b"x" * 25)
    assert len(lru) == 4
    lru.clear()
    assert len(lru) == 0
