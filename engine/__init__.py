"""isthmus.engine."""
