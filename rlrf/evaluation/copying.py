"""How much of a summary is its prompt restated: the shape reward hacking took in the RLRF loop.

On future lists the reward pays for text that names films like the ones the user goes on to watch,
and the prompt's own history is such a text; an aligned policy learned to copy it (README, "Does
the loop learn?"). The share of the summary's word n-grams found in its prompt shows that in the
report, and `score.copy_penalty` subtracts it from the reward that makes the pairs.
"""

from __future__ import annotations

import re

WORD = re.compile(r"\w+")


def _ngrams(text: str, n: int) -> list[tuple[str, ...]]:
    words = WORD.findall(text.lower())
    return [tuple(words[i: i + n]) for i in range(len(words) - n + 1)]


def copied_share(text: str, prompt: str, n: int = 5) -> float:
    """Share of the text's word n-grams (lower-cased) that also occur in the prompt; 0 for a text
    shorter than n words."""
    grams = _ngrams(text, n)
    if not grams:
        return 0.0
    source = set(_ngrams(prompt, n))
    return sum(g in source for g in grams) / len(grams)
