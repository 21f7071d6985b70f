"""isthmus.tokenizer: HF tokenizer files, chat templates, streaming detokenizer, stop strings."""

from .chat import render_chat_template
from .detok import IncrementalDetokenizer
from .errors import ChatTemplateError, TokenizerError
from .hf import Tokenizer
from .stops import StopStringMatcher

__all__ = [
    "ChatTemplateError",
    "IncrementalDetokenizer",
    "StopStringMatcher",
    "Tokenizer",
    "TokenizerError",
    "render_chat_template",
]
