"""``depot``: the user CLI (save images as builds, list/delete builds, usage, login)."""
