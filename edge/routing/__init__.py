"""The trained escalation router: corpus, features, fitting, the weights file (see docs/routing.md)."""
