"""isthmus.edge."""
