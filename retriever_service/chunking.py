"""Split documents into chunks that the embedding model sees whole.

A chunk never holds more tokens than the model reads (text past ``max_seq_length`` is dropped
silently, so its end could never be found). Chunks end on sentence boundaries, prefer paragraph
boundaries, carry a little overlap, and keep the original text between their character offsets.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

TokenSpans = Callable[[Sequence[str]], list[list[tuple[int, int]]]]

_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")
# A sentence ends at . ! ? … (optionally followed by closing quotes/brackets) and whitespace.
_SENTENCE_END = re.compile(r"[.!?…]+[\"'”’)\]]*\s+")
# A line that starts a block of its own in Markdown-ish text: heading, list item, table row, quote.
_BLOCK_START = re.compile(r"^\s*(#{1,6}\s|[-*+•]\s|\d{1,3}[.)]\s|\||>)")
_LIST_NUMBER = re.compile(r"\d{1,3}[.)]")
_LINE_END_PUNCT = re.compile(r"[.!?:;…]\s*$")
# A paragraph may start a new chunk once the current one is this full.
_PARAGRAPH_BREAK_FILL = 0.6


@dataclass(frozen=True)
class Chunk:
    """A piece of a document: its text, where it sits, and its size in model tokens."""

    position: int
    text: str
    start: int
    end: int
    token_count: int


@dataclass(frozen=True)
class _Unit:
    start: int
    end: int
    paragraph: int
    tokens: int


class Chunker:
    """Packs sentences into chunks of at most ``max_tokens`` model tokens."""

    def __init__(self, token_spans: TokenSpans, max_tokens: int, overlap_tokens: int = 32) -> None:
        if max_tokens < 8:
            raise ValueError("max_tokens must be at least 8")
        if not 0 <= overlap_tokens < max_tokens:
            raise ValueError("overlap_tokens must be in [0, max_tokens)")
        self._token_spans = token_spans
        self.max_tokens = max_tokens
        self.overlap_tokens = overlap_tokens

    @property
    def signature(self) -> str:
        """Identify the chunking settings, so a change invalidates stored content hashes."""
        return f"sentences/v1/max={self.max_tokens}/overlap={self.overlap_tokens}"

    def split(self, text: str) -> list[Chunk]:
        """Split one document's text into chunks."""
        units = self._units(text)
        if not units:
            return []
        groups = self._pack(units)
        chunks = []
        for position, group in enumerate(groups):
            start, end = group[0].start, group[-1].end
            chunks.append(
                Chunk(position, text[start:end], start, end, sum(u.tokens for u in group))
            )
        return chunks

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Count each text in model tokens."""
        return [len(spans) for spans in self._token_spans(texts)]

    # -- segmentation -------------------------------------------------------------------------

    def _units(self, text: str) -> list[_Unit]:
        spans = list(_sentence_spans(text))
        if not spans:
            return []
        token_spans = self._token_spans([text[s:e] for s, e, _ in spans])
        units: list[_Unit] = []
        for (start, end, paragraph), tokens in zip(spans, token_spans, strict=True):
            if len(tokens) <= self.max_tokens:
                units.append(_Unit(start, end, paragraph, len(tokens)))
            else:
                units.extend(self._split_long(text[start:end], start, paragraph, tokens))
        return units

    def _split_long(
        self, sentence: str, base: int, paragraph: int, tokens: list[tuple[int, int]]
    ) -> list[_Unit]:
        """Cut a sentence longer than the budget into windows, at word starts where possible."""
        pieces: list[_Unit] = []
        first = 0
        while first < len(tokens):
            last = min(first + self.max_tokens, len(tokens))
            if last < len(tokens):
                # Back off to a token that starts a new word, so no word is cut in two.
                cut = last
                while cut > first + 1 and tokens[cut][0] == tokens[cut - 1][1]:
                    cut -= 1
                if cut > first + 1:
                    last = cut
            # A window cut inside a word is tokenized afresh on its own (its first piece loses
            # its "##" continuation) and can need more tokens: shrink it until it fits.
            count = self.count_tokens([sentence[tokens[first][0] : tokens[last - 1][1]]])[0]
            while count > self.max_tokens and last - first > 1:
                last -= 1
                count = self.count_tokens([sentence[tokens[first][0] : tokens[last - 1][1]]])[0]
            pieces.append(
                _Unit(base + tokens[first][0], base + tokens[last - 1][1], paragraph, count)
            )
            first = last
        return pieces

    # -- packing ------------------------------------------------------------------------------

    def _pack(self, units: list[_Unit]) -> list[list[_Unit]]:
        groups: list[list[_Unit]] = []
        current: list[_Unit] = []
        current_tokens = 0
        for unit in units:
            fits = current_tokens + unit.tokens <= self.max_tokens
            paragraph_break = (
                bool(current)
                and unit.paragraph != current[-1].paragraph
                and current_tokens >= _PARAGRAPH_BREAK_FILL * self.max_tokens
            )
            if current and (not fits or paragraph_break):
                groups.append(current)
                current = self._overlap_tail(current, unit)
                current_tokens = sum(u.tokens for u in current)
            current.append(unit)
            current_tokens += unit.tokens
        if current:
            groups.append(current)
        return groups

    def _overlap_tail(self, previous: list[_Unit], incoming: _Unit) -> list[_Unit]:
        """Return the trailing sentences of a chunk to repeat at the start of the next one."""
        tail: list[_Unit] = []
        tokens = 0
        for unit in reversed(previous[1:]):
            if tokens + unit.tokens > self.overlap_tokens:
                break
            if tokens + unit.tokens + incoming.tokens > self.max_tokens:
                break
            tail.insert(0, unit)
            tokens += unit.tokens
        return tail


def _sentence_spans(text: str):
    """Yield (start, end, paragraph index) of each sentence, trimmed of surrounding space."""
    paragraph = 0
    position = 0
    for block_match in [*_PARAGRAPH_BREAK.finditer(text), None]:
        block_end = block_match.start() if block_match else len(text)
        block = text[position:block_end]
        emitted = False
        for start, end in _block_sentences(block):
            emitted = True
            yield position + start, position + end, paragraph
        if emitted:
            paragraph += 1
        if block_match:
            position = block_match.end()


def _block_sentences(block: str):
    """Yield sentence spans of one paragraph: lines that stand alone, then sentence ends."""
    for start, end in _logical_lines(block):
        piece_start = start
        for match in _SENTENCE_END.finditer(block, start, end):
            # "7. Check the compressor": a list number is not a sentence of its own.
            if _LIST_NUMBER.fullmatch(block[piece_start : match.end()].strip()):
                continue
            yield from _trimmed(block, piece_start, match.end())
            piece_start = match.end()
        if piece_start < end:
            yield from _trimmed(block, piece_start, end)


def _logical_lines(block: str):
    """Join hard-wrapped lines; keep headings, list items and table rows as their own lines."""
    lines: list[tuple[int, int]] = []
    offset = 0
    for raw in block.split("\n"):
        lines.append((offset, offset + len(raw)))
        offset += len(raw) + 1
    current: tuple[int, int] | None = None
    for start, end in lines:
        line = block[start:end]
        if not line.strip():
            continue
        if current is None:
            current = (start, end)
            continue
        previous = block[current[0] : current[1]].rstrip().split("\n")[-1]
        standalone = (
            _BLOCK_START.match(line)
            or _BLOCK_START.match(previous)
            or _LINE_END_PUNCT.search(previous)
        )
        if standalone:
            yield current
            current = (start, end)
        else:
            current = (current[0], end)
    if current is not None:
        yield current


def _trimmed(text: str, start: int, end: int):
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    if end > start:
        yield start, end
