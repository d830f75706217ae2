"""gateway.text: sentence splitting and content words."""

from __future__ import annotations

import pytest

from gateway.text import content_words, overlap, split_sentences, term_weights, weighted_overlap


def test_split_sentences_on_ends_and_lines() -> None:
    text = (
        "How much does the Comfort+ plan cost?\n"
        "Comfort+ costs $3.49 per month. Paying yearly saves 19%! Really… Yes.\n\n"
        '"Quoted." Then more.'
    )
    assert split_sentences(text) == [
        "How much does the Comfort+ plan cost?",
        "Comfort+ costs $3.49 per month.",
        "Paying yearly saves 19%!",
        "Really…",
        "Yes.",
        '"Quoted."',
        "Then more.",
    ]


def test_split_sentences_keeps_closing_quotes_and_brackets() -> None:
    text = 'Press "Reset." Then wait (about 5 s.) Halo says "Done!") Finally, relax.'
    assert split_sentences(text) == [
        'Press "Reset."',
        "Then wait (about 5 s.)",
        'Halo says "Done!")',
        "Finally, relax.",
    ]


def test_split_sentences_keeps_abbreviations_and_numbers_whole() -> None:
    # No capital or digit after the dot: not a sentence end.
    assert split_sentences("Halo needs 24 volts, e.g. a C-wire. It costs $3.49 a month.") == [
        "Halo needs 24 volts, e.g. a C-wire.",
        "It costs $3.49 a month.",
    ]


def test_split_sentences_drops_markdown_markers_and_blank_lines() -> None:
    text = (
        "## Step 2\n\n- Turn off power.\n* Remove the plate.\n3. Mount Halo.\n> Note: done.\n  \n"
    )
    assert split_sentences(text) == [
        "Step 2",
        "Turn off power.",
        "Remove the plate.",
        "Mount Halo.",
        "Note: done.",
    ]


def test_split_sentences_of_nothing() -> None:
    assert split_sentences("") == []
    assert split_sentences(" \n\n ") == []


def test_content_words_lowercase_stem_and_drop_stopwords() -> None:
    words = content_words("How much do the Room Sensors cost? It's $39, or $69 for two.")
    assert words == {"much", "room", "sensor", "cost", "39", "69", "two"}


def test_content_words_keep_numbers_and_decimals() -> None:
    assert content_words("Comfort+ costs $3.49 per month, 1,000 homes") == {
        "comfort",
        "cost",
        "3.49",
        "per",
        "month",
        "1,000",
        "home",
    }


def test_content_words_handle_possessives_and_double_s() -> None:
    assert content_words("Halo's class glass buses") == {"halo", "class", "glass", "buse"}
    assert content_words("the a of") == set()


def test_content_words_drop_stopwords_that_end_in_s() -> None:
    # "does" and "this" are stopwords; stemmed first they became "doe" and "thi" and counted.
    assert content_words("What does this do? Does it?") == set()
    assert content_words("How does photosynthesis work") == {"photosynthesi", "work"}


def test_overlap() -> None:
    assert overlap({"a", "b"}, {"a", "c"}) == 0.5
    assert overlap(set(), {"a"}) == 0.0
    assert overlap({"a"}, set()) == 0.0


def test_term_weights_map_words_to_the_retrievers_idf() -> None:
    terms = [
        {"term": "thermostat", "idf": 0.6},
        {"term": "e3", "idf": 4.2},
        {"term": "ht-250", "idf": 3.0},
        {"term": "plans", "idf": 2.0},
    ]
    assert term_weights(terms) == {"thermostat": 0.6, "e3": 4.2, "ht": 3.0, "250": 3.0, "plan": 2.0}
    assert term_weights(None) == {}
    assert term_weights([]) == {}


def test_weighted_overlap_counts_rare_words_more() -> None:
    question = content_words("Why does my thermostat show error E3?")
    e3_line = content_words("E3: The wires detected do not match the system type.")
    e6_line = content_words("E6: The thermostat is too hot inside.")
    weights = {"thermostat": 0.7, "show": 1.9, "error": 2.9, "e3": 4.2}
    assert overlap(question, e3_line) == overlap(question, e6_line)
    assert weighted_overlap(question, e3_line, weights) == pytest.approx(4.2 / 9.7)
    assert weighted_overlap(question, e6_line, weights) == pytest.approx(0.7 / 9.7)
    # Without weights it is the plain share; a word the weights miss counts as their median.
    assert weighted_overlap(question, e3_line, {}) == overlap(question, e3_line)
    partial = {"e3": 4.0, "error": 2.0, "show": 1.0}
    assert weighted_overlap(question, e6_line, partial) == pytest.approx(2.0 / 9.0)
    assert weighted_overlap(set(), e6_line, weights) == 0.0
