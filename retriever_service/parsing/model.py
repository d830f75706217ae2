"""What a parser returns, and how it refuses a file."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Segment:
    """A span of a document's text that comes from one page and falls under one heading."""

    start: int
    end: int
    page: int | None = None
    section: str | None = None


@dataclass(frozen=True)
class ParsedDocument:
    """A file's text, the spans no chunk may cross, and what the file says its title is."""

    text: str
    segments: tuple[Segment, ...] = ()
    title: str | None = None
    pages: int | None = None
    metadata: dict[str, str | int] = field(default_factory=dict)


class FileRejected(Exception):
    """A file that cannot be ingested; ``code`` names why in a word, ``reason`` in a sentence."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason

    def __reduce__(self) -> tuple[type[FileRejected], tuple[str, str]]:
        # Raised in the parser's child process and re-raised here: pickle both fields.
        return (FileRejected, (self.code, self.reason))


class SegmentBuilder:
    """Join text pieces into one document text, remembering each piece's page and section."""

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._length = 0
        self.segments: list[Segment] = []

    def add(self, text: str, *, page: int | None = None, section: str | None = None) -> None:
        """Append a piece (blank pieces are dropped); pieces are separated by a blank line."""
        text = text.strip()
        if not text:
            return
        if self._parts:
            self._parts.append("\n\n")
            self._length += 2
        start = self._length
        self._parts.append(text)
        self._length += len(text)
        previous = self.segments[-1] if self.segments else None
        if previous and previous.page == page and previous.section == section:
            # Same page, same heading: one span, so chunks may pack paragraphs together.
            self.segments[-1] = Segment(previous.start, self._length, page, section)
        else:
            self.segments.append(Segment(start, self._length, page, section))

    @property
    def text(self) -> str:
        return "".join(self._parts)
