"""Query-like texts made from an expert's own documents, for collections with no labelled queries.

Used for pilots (and, in training, as pseudo queries): the title where there
is one, else a short span of the text, which is closer to how people search
than a whole passage.
"""

from __future__ import annotations

import random
from collections.abc import Iterable


def pseudo_queries(
    documents: Iterable[tuple[str, str]],
    *,
    min_words: int = 4,
    max_words: int = 12,
    seed: int = 0,
) -> list[str]:
    """One pseudo query per ``(title, text)``: the title, else a random 4-12-word span of the text."""
    if not 1 <= min_words <= max_words:
        raise ValueError(f"need 1 <= min_words <= max_words, got {min_words} and {max_words}")
    rng = random.Random(seed)
    queries = []
    for title, text in documents:
        if title.strip():
            queries.append(title.strip())
            continue
        words = text.split()
        if not words:
            continue
        length = min(len(words), rng.randint(min_words, max_words))
        start = rng.randint(0, len(words) - length)
        queries.append(" ".join(words[start : start + length]))
    return queries
