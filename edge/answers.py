"""What the edge streams back for one request, named once for every module that passes it along."""

from __future__ import annotations

from typing import TypeAlias

from isthmus.protocol import Done, Error, Migrated, TokenChunk

# zero or more TokenChunks, then exactly one Done or Error
Answer: TypeAlias = TokenChunk | Done | Error
# what a center stream may yield: an Answer, or Migrated as the last message of a migrated
# stream (edge/migration.py continues it on another replica)
CenterAnswer: TypeAlias = Answer | Migrated
