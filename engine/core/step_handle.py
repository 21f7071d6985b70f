"""A launched engine step whose device work may still be running (`ModelRunner.launch`)."""

from __future__ import annotations

from collections.abc import Callable

from isthmus.engine.core.plan import RunOutput


class StepHandle:
    """A launched step: ``result()`` waits for it (once); ``overlapped`` when it was still running."""

    __slots__ = ("_finish", "_out", "overlapped")

    def __init__(self, finish: Callable[[], RunOutput], *, overlapped: bool) -> None:
        self._finish, self.overlapped = finish, overlapped
        self._out: RunOutput | None = None

    def result(self) -> RunOutput:
        if self._out is None:
            self._out = self._finish()
        return self._out
