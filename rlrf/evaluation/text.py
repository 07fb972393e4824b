"""Does a summary end on its own, and does it say the same thing twice?

A policy aligned on a reward that only reads the summary can learn to run into `max_new_tokens`
and loop ("...particularly fond of ... They also enjoy ... particularly fond"): the reward does not
see it, a reader does. These two per-summary measures put that in the report beside the reward.
"""

from __future__ import annotations

import re

WORD = re.compile(r"\w+")
# a sentence ends at . ! ? (or an ellipsis), possibly inside a closing quote or bracket
SENTENCE_END = re.compile(r"[.!?…][\"'”’)\]]*$")
SENTENCE_SPLIT = re.compile(r"(?<=[.!?…])[\"'”’)\]]*\s+")
REPEAT_NGRAM = 8  # words: long enough that a shared phrase ("the user enjoys films that are") is not a repeat
REPEAT_SENTENCE_WORDS = 3  # a shorter repeated sentence ("Yes.") is not a loop


def ends_on_its_own(text: str, finished: bool) -> bool:
    """True when the summary stopped by itself: it ended with EOS (`finished` in its response record),
    or, cut at the cap, its last character still closes a sentence (. ! ? or an ellipsis, possibly
    followed by a closing quote or bracket), so a reader sees no sentence broken off."""
    return bool(finished) or bool(SENTENCE_END.search(text.rstrip()))


def _words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def has_repeat(text: str) -> bool:
    """True when the summary repeats itself: a sentence of at least 3 words occurs twice (compared by
    its lower-cased words, punctuation ignored), or any run of 8 words occurs twice (which also
    catches a loop that crosses sentence ends or was cut mid-sentence)."""
    sentences = [tuple(_words(s)) for s in SENTENCE_SPLIT.split(text)]
    sentences = [s for s in sentences if len(s) >= REPEAT_SENTENCE_WORDS]
    if len(set(sentences)) < len(sentences):
        return True
    words = _words(text)
    grams = [tuple(words[i: i + REPEAT_NGRAM]) for i in range(len(words) - REPEAT_NGRAM + 1)]
    return len(set(grams)) < len(grams)
