"""How much of a summary is its prompt restated: the shape reward hacking took in the RLRF loop.

On future lists the reward pays for text that names films like the ones the user goes on to watch,
and the prompt's own history is such a text; an aligned policy learned to copy it (README, "Does
the loop learn?"). The share of the summary's word n-grams found in its prompt shows that in the
report, and `score.copy_penalty` subtracts it from the reward that makes the pairs.
"""

from __future__ import annotations

import re

WORD = re.compile(r"\w+")


def _ngrams(words: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(words[i: i + n]) for i in range(len(words) - n + 1)}


def copied_share(text: str, prompt: str, n: int = 5) -> float:
    """Share of the text's word n-grams (lower-cased) that also occur in the prompt; 0 for a text
    shorter than n words."""
    words = WORD.findall(text.lower())
    if len(words) < n:
        return 0.0
    grams = [tuple(words[i: i + n]) for i in range(len(words) - n + 1)]
    source = _ngrams(WORD.findall(prompt.lower()), n)
    return sum(g in source for g in grams) / len(grams)
