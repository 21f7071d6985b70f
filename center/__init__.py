"""isthmus.center."""
