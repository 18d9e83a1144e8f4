"""Edges of one region coordinated through Redis: one upstream fetch per digest per region."""
