"""isthmus.protocol."""
