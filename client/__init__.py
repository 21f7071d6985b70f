"""isthmus.client."""
