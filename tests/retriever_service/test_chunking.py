"""Chunking with the real MiniLM tokenizer: budgets, boundaries, overlap, offsets and ids."""

from __future__ import annotations

import itertools
import random
import string
from typing import Any

import pytest

from retriever_service.chunking import Chunk, Chunker

_WORDS = (
    "the thermostat sensor schedule humidity furnace compressor warranty subscription "
    "installation wiring bracket display firmware household temperature comfort energy "
    "report filter reminder vacation mode geofence occupancy notification unbelievably "
    "antidisestablishmentarianism configuration troubleshooting a an of to in on with"
).split()


def rng(seed: int) -> random.Random:
    return random.Random(seed)  # noqa: S311 - reproducible test text, not secrets


def sentences(rnd: random.Random, count: int, words: tuple[int, int] = (4, 18)) -> list[str]:
    out = []
    for _ in range(count):
        body = " ".join(rnd.choice(_WORDS) for _ in range(rnd.randint(*words)))
        out.append(body[0].upper() + body[1:] + rnd.choice([".", ".", ".", "?", "!"]))
    return out


def long_document(seed: int = 7, paragraphs: int = 30) -> str:
    rnd = rng(seed)
    return "\n\n".join(" ".join(sentences(rnd, rnd.randint(1, 9))) for _ in range(paragraphs))


def recount(embedder: Any, text: str) -> int:
    return len(embedder.token_spans([text])[0])


def check_chunks(embedder: Any, chunker: Chunker, text: str) -> list[Chunk]:
    """The invariants every split must keep; returns the chunks for further checks."""
    chunks = chunker.split(text)
    assert chunks, "a text with content must give chunks"
    assert [c.position for c in chunks] == list(range(len(chunks)))
    covered = bytearray(len(text))
    for chunk in chunks:
        assert chunk.text == text[chunk.start : chunk.end]
        assert chunk.text == chunk.text.strip(), "chunks are trimmed of surrounding space"
        tokens = recount(embedder, chunk.text)
        assert tokens <= chunker.max_tokens, (
            f"chunk {chunk.position} has {tokens} model tokens > {chunker.max_tokens}: "
            f"{chunk.text[:80]!r}"
        )
        assert chunk.token_count <= chunker.max_tokens
        covered[chunk.start : chunk.end] = b"\x01" * (chunk.end - chunk.start)
    uncovered = [i for i, ch in enumerate(text) if not ch.isspace() and not covered[i]]
    assert not uncovered, f"characters outside every chunk, first at {uncovered[0]}"
    for before, after in itertools.pairwise(chunks):
        assert after.start > before.start, "chunks move forward"
        assert after.end > before.end, "chunks move forward"
        if after.start < before.end:
            overlap = recount(embedder, text[after.start : before.end])
            assert overlap <= chunker.overlap_tokens, (before, after)
    return chunks


@pytest.fixture(scope="module")
def chunker(embedder: Any) -> Chunker:
    """A small budget, so that modest texts need many chunks."""
    return Chunker(embedder.token_spans, max_tokens=64, overlap_tokens=16)


@pytest.fixture(scope="module")
def model_chunker(embedder: Any) -> Chunker:
    """The budget the service uses: the model's own limit."""
    assert embedder.max_tokens == 254  # 256 word pieces minus [CLS] and [SEP]
    return Chunker(embedder.token_spans, max_tokens=embedder.max_tokens, overlap_tokens=32)


def test_long_generated_text_respects_budget(embedder: Any, chunker: Chunker) -> None:
    text = long_document()
    chunks = check_chunks(embedder, chunker, text)
    assert len(chunks) > 20


def test_long_generated_text_at_model_budget(embedder: Any, model_chunker: Chunker) -> None:
    text = long_document(seed=3, paragraphs=60)
    chunks = check_chunks(embedder, model_chunker, text)
    assert len(chunks) > 5
    # Packing is not wasteful: chunks other than the last are well filled.
    assert all(c.token_count >= model_chunker.max_tokens * 0.4 for c in chunks[:-1])


def test_short_text_is_one_chunk(embedder: Any, model_chunker: Chunker) -> None:
    text = "  The Halo thermostat supports Wi-Fi. It needs a C wire.  "
    [chunk] = check_chunks(embedder, model_chunker, text)
    assert chunk.text == "The Halo thermostat supports Wi-Fi. It needs a C wire."
    assert (chunk.start, chunk.end) == (2, len(text) - 2)
    assert chunk.token_count == recount(embedder, chunk.text)


def test_chunks_end_at_sentence_boundaries(embedder: Any, chunker: Chunker) -> None:
    rnd = rng(11)
    text = " ".join(sentences(rnd, 80, words=(5, 10)))
    chunks = check_chunks(embedder, chunker, text)
    assert len(chunks) > 5
    for chunk in chunks:
        assert chunk.text[-1] in ".?!", chunk.text[-30:]
        assert chunk.start == 0 or text[chunk.start - 2] in ".?!", text[chunk.start - 5 :][:20]
        assert chunk.text[0].isupper()


def test_overlap_repeats_trailing_sentences_within_budget(embedder: Any, chunker: Chunker) -> None:
    rnd = rng(5)
    text = " ".join(sentences(rnd, 60, words=(3, 6)))
    chunks = check_chunks(embedder, chunker, text)
    overlapping = [(a, b) for a, b in itertools.pairwise(chunks) if b.start < a.end]
    assert len(overlapping) >= len(chunks) // 2, "short sentences must be carried over"
    for before, after in overlapping:
        shared = text[after.start : before.end]
        assert before.text.endswith(shared)
        assert after.text.startswith(shared)
        assert 0 < recount(embedder, shared) <= chunker.overlap_tokens


def test_no_overlap_when_budget_is_zero(embedder: Any) -> None:
    chunker = Chunker(embedder.token_spans, max_tokens=48, overlap_tokens=0)
    text = " ".join(sentences(rng(2), 50, words=(3, 6)))
    chunks = check_chunks(embedder, chunker, text)
    assert len(chunks) > 3
    assert all(b.start >= a.end for a, b in itertools.pairwise(chunks))


def test_single_sentence_longer_than_budget(embedder: Any, chunker: Chunker) -> None:
    rnd = rng(1)
    text = " ".join(rnd.choice(_WORDS) for _ in range(700)) + "."
    chunks = check_chunks(embedder, chunker, text)
    assert len(chunks) >= 700 // 64
    # Cut at word starts: no chunk begins or ends in the middle of a word.
    for chunk in chunks:
        assert chunk.start == 0 or text[chunk.start - 1].isspace()
        assert chunk.end == len(text) or text[chunk.end].isspace()


def test_text_without_punctuation_or_newlines(embedder: Any, model_chunker: Chunker) -> None:
    rnd = rng(4)
    text = " ".join(rnd.choice(_WORDS) for _ in range(3000))
    chunks = check_chunks(embedder, model_chunker, text)
    assert len(chunks) >= 3000 // 254


@pytest.mark.parametrize("seed", range(3))
def test_words_longer_than_budget_are_cut_within_budget(
    embedder: Any, model_chunker: Chunker, seed: int
) -> None:
    """Base64 blobs and long URLs: no spaces for thousands of tokens.

    A piece cut inside a word is re-tokenized on its own (its first word piece loses its ``##``
    continuation) and can need more tokens than it had inside the word.
    """
    rnd = rng(seed)
    blob = "".join(rnd.choice(string.ascii_letters + string.digits + "+/") for _ in range(12000))
    check_chunks(embedder, model_chunker, f"Attachment follows. {blob} End of attachment.")


def test_long_url_at_small_budget(embedder: Any, chunker: Chunker) -> None:
    rnd = rng(0)
    url = "https://help.example.com/" + "/".join(rnd.choice(_WORDS) for _ in range(500))
    check_chunks(embedder, chunker, f"See {url} for details.")


def test_markdown_headings_and_lists(embedder: Any, chunker: Chunker) -> None:
    items = "\n".join(
        f"- Step {i}: open the {w} menu and press the dial" for i, w in enumerate(_WORDS)
    )
    numbered = "\n".join(f"{i}. Check the {w}" for i, w in enumerate(_WORDS[:15], start=1))
    text = (
        "# Installing the thermostat\n\n"
        "Turn off the power at the breaker. Remove the old thermostat.\n\n"
        "## Wiring\n\n"
        f"{items}\n\n"
        "## Checklist\n\n"
        f"{numbered}\n\n"
        "| Terminal | Wire |\n|---|---|\n| R | red |\n| C | blue |\n\n"
        "> Note: a C wire is required for the Pro model\n"
    )
    chunks = check_chunks(embedder, chunker, text)
    assert len(chunks) > 3
    for chunk in chunks:
        # Headings, list items and table rows stand alone: a chunk starts at the start of a
        # line, a numbered item's "7. " included.
        line_start = text.rfind("\n", 0, chunk.start) + 1
        assert text[line_start : chunk.start] == "", chunk.text[:40]
        for line in chunk.text.split("\n"):
            assert "#" not in line or line.startswith("#"), line
    assert chunks[0].text.startswith("# Installing the thermostat")


def test_unicode_text(embedder: Any, chunker: Chunker) -> None:
    rnd = rng(8)
    parts = [
        "Ünïcödé façade déjà vu.",
        "日本語のテキストです。温度を設定します。",
        "Привет, мир! Термостат работает.",
        "مرحبا بالعالم. هذا منظم الحرارة.",
        "Emoji work too 🙂🔥👍 really!",
        "Combining accents: cafe\u0301 and nai\u0308ve.",
        "Ελληνικά κείμενα εδώ.",
        "한국어 문장도 있습니다.",
    ]
    text = "\n\n".join(
        " ".join(rnd.choice(parts) for _ in range(rnd.randint(2, 8))) for _ in range(40)
    )
    chunks = check_chunks(embedder, chunker, text)
    assert len(chunks) > 5


def test_hard_wrapped_lines_are_joined(embedder: Any, model_chunker: Chunker) -> None:
    text = "The thermostat keeps\nthe temperature you set\nall day long.\nIt learns."
    [chunk] = check_chunks(embedder, model_chunker, text)
    assert chunk.text == text


@pytest.mark.parametrize("text", ["", " ", "\n\n\t  \n", "\u3000 \n"])
def test_empty_or_whitespace_text_has_no_chunks(chunker: Chunker, text: str) -> None:
    assert chunker.split(text) == []


def test_split_is_deterministic(chunker: Chunker) -> None:
    text = long_document(seed=21, paragraphs=10)
    assert chunker.split(text) == chunker.split(text)


def test_signature_changes_with_settings(embedder: Any) -> None:
    a = Chunker(embedder.token_spans, 64, 16)
    assert a.signature == Chunker(embedder.token_spans, 64, 16).signature
    assert a.signature != Chunker(embedder.token_spans, 64, 8).signature
    assert a.signature != Chunker(embedder.token_spans, 128, 16).signature


@pytest.mark.parametrize(("max_tokens", "overlap"), [(4, 0), (16, 16), (16, 20), (16, -1)])
def test_invalid_settings_are_rejected(embedder: Any, max_tokens: int, overlap: int) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the message varies by setting
        Chunker(embedder.token_spans, max_tokens, overlap)


def test_count_tokens_matches_tokenizer(embedder: Any, chunker: Chunker) -> None:
    texts = ["Hello world.", "unbelievably antidisestablishmentarianism", ""]
    assert chunker.count_tokens(texts) == [recount(embedder, t) for t in texts]
    assert chunker.count_tokens([""]) == [0]
