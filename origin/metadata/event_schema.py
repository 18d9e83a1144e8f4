"""Tables of the origin's event log (SQLAlchemy Core; SQLite and PostgreSQL alike): what
changed that edges must hear of at once (``origin/metadata/events.py`` appends and reads).

In the origin's one database (``origin/metadata/database.py`` creates every table at start),
on a ``MetaData`` of its own; events name repositories, tokens, builds and orgs by value, so
no foreign key points anywhere and pruning touches nothing else.

``seq`` is the log's position: monotonic, never reused. On SQLite the column is the rowid
with ``AUTOINCREMENT`` (a pruned maximum is never handed out again); on PostgreSQL an
identity column, whose values are allocated in commit order because every appender holds one
advisory lock from its insert until its commit (see ``events.py``).
"""

from __future__ import annotations

import sqlalchemy as sa

events_metadata = sa.MetaData()

events = sa.Table(
    "events",
    events_metadata,
    sa.Column(
        "seq",
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"),  # the rowid alias on SQLite
        sa.Identity(always=False),
        primary_key=True,
    ),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("at", sa.Double(), nullable=False),  # POSIX seconds, the appender's clock
    sa.Column("repository", sa.String(), nullable=True),  # internal name
    # What the kind is about: a tag, a digest, a token id, a build id, an org slug.
    sa.Column("subject", sa.String(), nullable=True),
    sa.Column("data", sa.Text(), nullable=True),  # JSON object of the kind's other fields
    # The expiry pass asks "was this token's (build's) expiry recorded already?".
    sa.Index("ix_events_kind_subject", "kind", "subject"),
    sqlite_autoincrement=True,
)

# One row (id 1): the highest sequence pruned, so a follower behind it is told to start over
# (410) even when every later event was pruned too.
event_log_state = sa.Table(
    "event_log_state",
    events_metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
    sa.Column("pruned_through", sa.BigInteger(), nullable=False),
)
