"""The errors every stage of the pipeline raises: media code and engines alike import them from here."""

from __future__ import annotations


class EngineError(Exception):
    """A job failure with a plain-words explanation (what went wrong, what to do about it)."""


class EngineUnavailable(EngineError):
    """The engine cannot run at all (missing checkpoint, service unreachable): a setup problem."""
