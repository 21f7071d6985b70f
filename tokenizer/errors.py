"""Typed errors raised by isthmus.tokenizer."""

from __future__ import annotations


class TokenizerError(ValueError):
    """Bad tokenizer files or bad input (unknown token id, malformed messages)."""


class ChatTemplateError(TokenizerError):
    """The chat template failed to compile or render (including its own raise_exception calls)."""
