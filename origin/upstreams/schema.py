"""The table of upstream registries orgs register for the edges to mirror (SQLAlchemy Core;
SQLite and PostgreSQL alike).

In the origin's one database (``origin/metadata/database.py`` creates every table at start),
on a ``MetaData`` of its own; like the builds' tables it names its org by value (no foreign
key into the tenancy tables). The password is stored only encrypted
(``origin/upstreams/cipher.py``): ``secret`` is its ciphertext, empty for none.
"""

from __future__ import annotations

import sqlalchemy as sa

upstreams_metadata = sa.MetaData()

org_upstreams = sa.Table(
    "org_upstreams",
    upstreams_metadata,
    sa.Column("org_id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(100), primary_key=True),  # a registry host: ghcr.io
    sa.Column("url", sa.String(), nullable=False),
    sa.Column("username", sa.String(), nullable=False),  # "" for none
    sa.Column("secret", sa.Text(), nullable=False),  # the password's ciphertext; "" for none
    sa.Column("created_at", sa.Double(), nullable=False),
)
