"""Does a summary end on its own, and does it repeat itself: the two measures report.md shows beside
the reward (rlrf/evaluation/text.py), and what of a cut summary `score.trim_to_sentence` keeps, on
hand-built summaries."""

from __future__ import annotations

import pytest

from rlrf.evaluation.text import ends_on_its_own, has_repeat, up_to_last_sentence


@pytest.mark.parametrize("text", [
    "The user enjoys thrillers.",
    "They like comedies!  ",
    'They call it "a masterpiece."',
    "Fond of war films (mostly from the 1940s.)",
    "Is it a drama?",
])
def test_a_summary_cut_at_the_cap_still_ends_when_its_last_sentence_is_closed(text):
    assert ends_on_its_own(text, finished=False)


@pytest.mark.parametrize("text", [
    "The user enjoys thrillers and particularly fond",
    "They like comedies, especially",
    "Mr. Smith's favourite is the 1997 film",
    "",
])
def test_a_summary_cut_mid_sentence_does_not_end_on_its_own(text):
    assert not ends_on_its_own(text, finished=False)


def test_a_summary_that_stopped_with_eos_ends_on_its_own_whatever_its_last_character():
    assert ends_on_its_own("The user enjoys thrillers and", finished=True)


def test_a_sentence_said_twice_is_a_repeat_even_with_other_case_and_punctuation():
    text = "They love horror films. They also enjoy comedies. They love horror films!"
    assert has_repeat(text)
    assert has_repeat("They love horror films. they LOVE horror, films.")


def test_a_loop_of_eight_words_cut_mid_sentence_is_a_repeat():
    text = ('The user is particularly fond of the 1997 film "Boosie Boo" (which was a horror film). They also '
            'enjoy comedies and are particularly fond of the 1997 film "Boosie Boo')
    assert has_repeat(text)


@pytest.mark.parametrize("text", [
    "They love horror films. They also enjoy comedies from the 1990s.",
    "Yes. Yes. The user likes dramas.",  # a repeated sentence of under 3 words is not a loop
    "The user enjoys films that are dark. The user enjoys films that are funny.",  # 7 shared words, not 8
    "",
])
def test_a_summary_without_a_repeated_sentence_or_eight_word_run_is_not_a_repeat(text):
    assert not has_repeat(text)


def test_one_word_short_of_eight_is_not_a_repeat():
    text = ('The user is particularly fond of the 1997 film "Boosie Boo". They also enjoy comedies and are '
            'particularly fond of the 1997 film "Boosie')  # the shared run is 7 words
    assert not has_repeat(text)


def test_a_cut_summary_keeps_its_text_up_to_the_last_closed_sentence():
    text = 'They love "Gattaca" (1997). They also enjoy thrillers of the nineties. They are a fan of'
    assert up_to_last_sentence(text) == 'They love "Gattaca" (1997). They also enjoy thrillers of the nineties.'


def test_a_text_whose_last_sentence_closes_is_kept_whole():
    assert up_to_last_sentence("Likes quiet dramas and late-nineties thrillers.  ") == \
        "Likes quiet dramas and late-nineties thrillers."


@pytest.mark.parametrize("text", [
    "Drama, Sci-Fi, Thriller, Mystery, Thriller, Drama, Romance",  # a list: no sentence at all
    "1. Drama 2. Comedy 3. War films of the",  # list markers are not sentence ends
    "Likes dramas. Also enjoys the occasional western and",  # the only closed sentence is under 5 words
])
def test_nothing_is_kept_when_no_sentence_of_five_words_closes(text):
    assert up_to_last_sentence(text) is None


def test_a_title_before_a_name_does_not_end_the_sentence():
    assert up_to_last_sentence("She loves films like Dr. Strangelove and Mr. Smith. She also") == \
        "She loves films like Dr. Strangelove and Mr. Smith."
