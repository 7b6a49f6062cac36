"""The one error every datamodule raises when its files are missing."""
from __future__ import annotations

from collections.abc import Iterable


class DataNotFoundError(FileNotFoundError):
    """A data set's files are missing: says where we looked and the command that gets them."""

    def __init__(self, dataset: str, looked_in: Iterable[str], expected: str, how_to_get: str):
        places = "\n".join(f"  - {place}" for place in looked_in)
        super().__init__(
            f"{dataset} not found. Looked for {expected} in:\n{places}\nGet it with:\n  {how_to_get}"
        )
