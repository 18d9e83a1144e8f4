"""Coordination between the edge processes of one host (``edge serve --workers N``)."""
