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


# a sentence end followed by more text; not after a list marker ("2. Drama") or a title ("Dr. No")
_TITLES = "".join(rf"(?<!\b{t})" for t in ("Dr", "Mr", "Ms", "Mrs", "St", "Jr", "Sr", "vs"))
_INNER_END = re.compile(rf"(?<![\s\d]\d)(?<!\s\d)(?<!^\d){_TITLES}[.!?…][\"'”’)\]]*(?=\s)")
MIN_KEPT_WORDS = 5


def up_to_last_sentence(text: str) -> str | None:
    """The text up to and including its last closed sentence, for a summary cut at the length cap:
    the part a reader keeps. None when no sentence of at least 5 words closes before the cut (a list
    or a single run-on sentence: nothing to keep). A text whose last character closes a sentence is
    returned whole."""
    text = text.rstrip()
    if SENTENCE_END.search(text):
        return text
    ends = [m.end() for m in _INNER_END.finditer(text)]
    if not ends or len(_words(text[: ends[-1]])) < MIN_KEPT_WORDS:
        return None
    return text[: ends[-1]]
