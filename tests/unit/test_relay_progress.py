"""How ``depot push`` shows a relay job's events (depot/relay_progress.py)."""

from __future__ import annotations

import io
import json

from depot.relay_progress import BarsView, JsonView, LinesView, QuietView, describe

DIGEST = "sha256:" + "ab" * 32
EVENTS = [
    {"seq": 0, "event": "accepted", "job": "j1", "source": "p:b", "digest": DIGEST},
    {"seq": 1, "event": "plan", "blobs": 3, "bytes": 3 * 1024 * 1024, "manifests": 1,
     "referrers": 0},
    {"seq": 2, "event": "blob", "status": "started", "target": "r/a", "digest": DIGEST,
     "size": 2048},
    {"seq": 3, "event": "bytes", "target": "r/a", "digest": DIGEST, "sent": 1024, "size": 2048},
    {"seq": 4, "event": "blob", "status": "done", "target": "r/a", "digest": DIGEST,
     "size": 2048},
    {"seq": 5, "event": "blob", "status": "mounted", "target": "r/b", "digest": DIGEST,
     "size": 2048, "source": "r/a"},
    {"seq": 6, "event": "tag", "target": "r/a:v1", "digest": DIGEST},
    {"seq": 7, "event": "done", "seconds": 1.5, "blobs_copied": 1, "bytes_copied": 2048,
     "blobs_skipped": 0, "blobs_mounted": 1, "digest": DIGEST},
]  # fmt: skip


def test_lines_one_per_event_without_byte_counts() -> None:
    err = io.StringIO()
    with LinesView(err) as view:
        for event in EVENTS:
            view.event(event)
    lines = err.getvalue().splitlines()
    assert lines[0] == "relay job j1: p:b (sha256:abababababab)"
    assert lines[1] == "3 blobs (3.0 MiB), 1 manifests, 0 referrers"
    assert lines[2] == "r/a: copying sha256:abababababab 2.0 KiB"
    assert lines[3].startswith("r/a: copied  sha256:abababababab 2.0 KiB in ")
    assert lines[4] == "r/b: mounted sha256:abababababab from r/a"
    assert lines[5] == "r/a:v1: tagged sha256:abababababab"
    assert lines[6].startswith("done in 1.5 s: 1 blobs copied (2.0 KiB)")
    assert len(lines) == 7  # the bytes event is not a line


def test_json_quiet_and_bars() -> None:
    out = io.StringIO()
    with JsonView(out) as view:
        for event in EVENTS:
            view.event(event)
    assert [json.loads(line) for line in out.getvalue().splitlines()] == EVENTS
    with QuietView() as quiet:
        for event in EVENTS:
            quiet.event(event)
    err = io.StringIO()
    with BarsView(err) as bars:
        for event in EVENTS:
            bars.event(event)
    shown = err.getvalue()
    assert "3 blobs (3.0 MiB)" in shown and "r/b: mounted" in shown and "r/a:v1: tagged" in shown
    assert "r/a: copied  sha256:abababababab 2.0 KiB" in shown  # too small for a bar: a line
    assert describe({"event": "error", "message": "x"}) is None
