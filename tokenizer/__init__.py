"""isthmus.tokenizer."""
