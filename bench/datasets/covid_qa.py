"""Build a BEIR-layout retrieval view of COVID-QA: ``python -m bench.datasets.covid_qa SRC OUT``.

SRC is a SQuAD-format file from github.com/deepset-ai/COVID-QA (``data/question-answering/
200423_covidQA.json``): one whole research paper per context, with the questions annotators
asked about it and the answer spans they marked. OUT receives:

- ``corpus.jsonl``: one line per passage, ``{"_id": "<paper_id>-p<k>", "title", "text",
  "metadata": {"paper_id", "passage_index", "char_start", "char_end"}}``. ``text`` is
  ``context[char_start:char_end]`` verbatim; ``title`` is the paper's title where the JSON has
  one, else empty (COVID-QA has none: the title is the first line of the paper's first passage).
- ``queries.jsonl``: one line per kept question, ``{"_id", "text", "metadata": {"answers",
  "paper_id"}}``, ``_id`` being the original question id.
- ``qrels/test.tsv``: ``query-id<TAB>corpus-id<TAB>score`` with a header line; score 1 for every
  passage an answer span touches (usually one; more where the span crosses a passage boundary).
- ``README.md``: source, commit, license, how the view was built and its counts.

Passages are cut from each context deterministically: the text is split into units at paragraph,
sentence and line ends, and a dynamic program picks the cuts that keep passages within
MIN_WORDS..MAX_WORDS (close to TARGET_WORDS) at the cheapest boundaries, paragraph ends first,
sentence ends next. A sentence is cut only when it is longer than MAX_WORDS by itself.

An answer is located at its ``answer_start`` or, where that offset is off by a few characters
(as in about one COVID-QA answer in six), at the nearest occurrence of its text within
ANSWER_SLACK characters; questions with no locatable answer are dropped. Questions whose text
repeats within a paper are merged into the first one, keeping every answer of each.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import re
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SOURCE_REPO = "https://github.com/deepset-ai/COVID-QA"
SOURCE_PATH = "data/question-answering/200423_covidQA.json"
SOURCE_LICENSE = "Apache License 2.0 (the `LICENSE` file of the source repository)"

MIN_WORDS = 80
MAX_WORDS = 200
TARGET_WORDS = (MIN_WORDS + MAX_WORDS) // 2
ANSWER_SLACK = 32  # characters an answer may sit away from its recorded answer_start

# Cost of ending a passage in a gap between two words, by the kind of gap.
PARAGRAPH_BREAK = 0.0  # a blank line, or a line that ends a sentence
SENTENCE_BREAK = 1.0
LINE_BREAK = 2.0  # a line that ends mid-sentence: header lines, hard-wrapped PDF text
WORD_BREAK = 4.0  # inside a sentence longer than MAX_WORDS

_WORD = re.compile(r"\S+")
_SENTENCE_END = re.compile(r"[.!?][\"'”’)\]]*$")
_SENTENCE_START = re.compile(r"[\"'“‘(\[]*[A-Z0-9]")
_ABBREVIATIONS = frozenset(
    "al. e.g. i.e. cf. ca. vs. fig. figs. ref. refs. eq. no. approx. dr. st. sp. spp.".split()
)


@dataclass(frozen=True)
class Unit:
    """Words ``first`` to ``stop - 1`` that a passage boundary never cuts."""

    first: int
    stop: int
    break_cost: float  # cost of a passage boundary right after this unit


@dataclass
class Stats:
    """Counts of what the build kept and dropped."""

    papers: int = 0
    passages: int = 0
    questions: int = 0
    kept: int = 0
    dropped_unlocated: int = 0
    merged_duplicates: int = 0
    answers_shifted: int = 0
    answers_unlocated: int = 0
    multi_passage_queries: int = 0
    passage_words: list[int] = field(default_factory=list)

    def lines(self) -> list[str]:
        """Return the counts as human-readable lines."""
        words = self.passage_words or [0]
        return [
            f"papers: {self.papers}",
            f"passages: {self.passages}",
            f"words per passage: min {min(words)}, median {statistics.median(words):g}, "
            f"max {max(words)}",
            f"questions in source: {self.questions}",
            f"questions kept: {self.kept}",
            f"questions dropped, no locatable answer: {self.dropped_unlocated}",
            f"questions merged into an identical question of the same paper: "
            f"{self.merged_duplicates}",
            f"answers found a few characters off their answer_start: {self.answers_shifted}",
            f"answers not found (dropped): {self.answers_unlocated}",
            f"kept questions judged on more than one passage: {self.multi_passage_queries}",
        ]


@dataclass
class View:
    """The BEIR rows built from one source file."""

    corpus: list[dict[str, Any]] = field(default_factory=list)
    queries: list[dict[str, Any]] = field(default_factory=list)
    qrels: list[tuple[str, str]] = field(default_factory=list)
    stats: Stats = field(default_factory=Stats)


def _is_sentence_end(word: str) -> bool:
    """Tell whether ``word`` ends a sentence, judged by its punctuation alone."""
    if not _SENTENCE_END.search(word):
        return False
    bare = word.lstrip("\"'“‘([").lower()
    return bare not in _ABBREVIATIONS and not re.fullmatch(r"[a-z]\.", bare)


def _gap_cost(context: str, left: re.Match[str], right: re.Match[str]) -> float:
    """Return the cost of a passage boundary between two neighbouring words."""
    newlines = context.count("\n", left.end(), right.start())
    ends_sentence = _is_sentence_end(left.group())
    if newlines >= 2 or (newlines == 1 and ends_sentence):
        return PARAGRAPH_BREAK
    if newlines == 1:
        return LINE_BREAK
    if ends_sentence and _SENTENCE_START.match(right.group()):
        return SENTENCE_BREAK
    return WORD_BREAK


def _units(context: str, words: Sequence[re.Match[str]]) -> list[Unit]:
    """Split the words into units at line and sentence ends, cutting over-long ones evenly."""
    units: list[Unit] = []
    first = 0
    for i in range(1, len(words) + 1):
        cost = PARAGRAPH_BREAK if i == len(words) else _gap_cost(context, words[i - 1], words[i])
        if cost == WORD_BREAK:
            continue
        pieces = math.ceil((i - first) / MAX_WORDS)
        cuts = [first + (i - first) * k // pieces for k in range(pieces + 1)]
        units.extend(
            Unit(a, b, cost if b == i else WORD_BREAK) for a, b in itertools.pairwise(cuts)
        )
        first = i
    return units


def _passage_cost(words: int) -> float:
    """Return how far a passage of ``words`` words is from the wanted size."""
    if words >= MIN_WORDS:
        return ((words - TARGET_WORDS) / (MAX_WORDS - MIN_WORDS)) ** 2
    low = ((MIN_WORDS - TARGET_WORDS) / (MAX_WORDS - MIN_WORDS)) ** 2
    return low + 4 * (MIN_WORDS - words) / MIN_WORDS


def split_passages(context: str) -> list[tuple[int, int]]:
    """Return the ``(char_start, char_end)`` spans of the passages cut from ``context``."""
    words = list(_WORD.finditer(context))
    units = _units(context, words)
    if not units:
        return []
    # best[j]: cheapest cut of units[:j]; back[j]: where its last passage starts.
    best = [0.0] + [math.inf] * len(units)
    back = [0] * (len(units) + 1)
    for j in range(1, len(units) + 1):
        for i in range(j - 1, -1, -1):
            size = units[j - 1].stop - units[i].first
            if size > MAX_WORDS and i < j - 1:
                break
            cost = best[i] + _passage_cost(size) + units[j - 1].break_cost
            if cost < best[j]:
                best[j], back[j] = cost, i
    spans: list[tuple[int, int]] = []
    j = len(units)
    while j:
        i = back[j]
        spans.append((words[units[i].first].start(), words[units[j - 1].stop - 1].end()))
        j = i
    return spans[::-1]


def locate_answer(context: str, text: str, start: int) -> tuple[int, int] | None:
    """Return the stripped char span of an answer near ``start``, or None when absent."""
    if not text.strip():
        return None
    if not context.startswith(text, start):
        lo, hi = max(0, start - ANSWER_SLACK), start + ANSWER_SLACK
        found = [i for i in range(lo, hi + 1) if context.startswith(text, i)]
        if not found:
            return None
        start = min(found, key=lambda i: (abs(i - start), i))
    lead = len(text) - len(text.lstrip())
    return start + lead, start + lead + len(text.strip())


def _paper_entries(source: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """Return ``(paper_id, title, paragraph)`` for every context in a SQuAD-format file."""
    entries: list[tuple[str, str, dict[str, Any]]] = []
    for a, article in enumerate(source["data"]):
        for p, paragraph in enumerate(article["paragraphs"]):
            paper_id = str(paragraph.get("document_id", f"{a}-{p}"))
            entries.append((paper_id, str(article.get("title", "")).strip(), paragraph))
    ids = [paper_id for paper_id, _, _ in entries]
    if len(set(ids)) != len(ids):
        raise ValueError("paper ids (document_id) repeat in the source file")
    return entries


def _corpus_rows(
    paper_id: str, title: str, context: str, spans: Sequence[tuple[int, int]]
) -> list[dict[str, Any]]:
    """Return the corpus rows of one paper's passages."""
    return [
        {
            "_id": f"{paper_id}-p{k}",
            "title": title,
            "text": context[start:end],
            "metadata": {
                "paper_id": paper_id,
                "passage_index": k,
                "char_start": start,
                "char_end": end,
            },
        }
        for k, (start, end) in enumerate(spans)
    ]


def _located_answers(context: str, qa: dict[str, Any], stats: Stats) -> list[tuple[int, int]]:
    """Return the char spans of a question's answers that can be found in ``context``."""
    spans: list[tuple[int, int]] = []
    for answer in [] if qa.get("is_impossible") else qa["answers"]:
        text, start = answer["text"], answer["answer_start"]
        span = locate_answer(context, text, start)
        if span is None:
            stats.answers_unlocated += 1
            continue
        stats.answers_shifted += not context.startswith(text, start)
        spans.append(span)
    return spans


def build_view(source: dict[str, Any]) -> View:
    """Cut passages, locate answers and judge passages for every paper in ``source``."""
    view = View()
    stats = view.stats
    for paper_id, title, paragraph in _paper_entries(source):
        context = paragraph["context"]
        spans = split_passages(context)
        rows = _corpus_rows(paper_id, title, context, spans)
        view.corpus += rows
        stats.papers += 1
        queries: dict[str, dict[str, Any]] = {}  # by question text, whitespace collapsed
        judged: dict[str, set[int]] = {}  # query id -> indices of the passages answers touch
        for qa in paragraph["qas"]:
            stats.questions += 1
            answers = _located_answers(context, qa, stats)
            if not answers:
                stats.dropped_unlocated += 1
                continue
            text = " ".join(qa["question"].split())
            stats.merged_duplicates += text in queries
            query = queries.setdefault(
                text,
                {
                    "_id": str(qa["id"]),
                    "text": text,
                    "metadata": {"answers": [], "paper_id": paper_id},
                },
            )
            known = query["metadata"]["answers"]
            hits = judged.setdefault(query["_id"], set())
            for start, end in answers:
                if context[start:end] not in known:
                    known.append(context[start:end])
                hits.update(k for k, (a, b) in enumerate(spans) if a < end and start < b)
        view.queries += queries.values()
        for query_id, hits in judged.items():
            view.qrels += [(query_id, rows[k]["_id"]) for k in sorted(hits)]
            stats.multi_passage_queries += len(hits) > 1
    stats.passages = len(view.corpus)
    stats.kept = len(view.queries)
    stats.passage_words = [len(row["text"].split()) for row in view.corpus]
    return view


def _readme(stats: Stats, source_name: str, source_sha256: str, commit: str | None) -> str:
    """Return the README that describes a built view."""
    counts = "\n".join(f"- {line}" for line in stats.lines())
    return f"""# COVID-QA, BEIR retrieval view

Questions that biomedical experts asked about {stats.papers} COVID-19 / coronavirus research
papers (mostly from CORD-19), with answer spans marked in each paper: Möller et al.,
"COVID-QA: A Question Answering Dataset for COVID-19" (2020).

## Source
- Repository: {SOURCE_REPO}
- File: `{SOURCE_PATH}` (read here as `{source_name}`, sha256 `{source_sha256}`)
- Commit: {commit or "not recorded"}
- License: {SOURCE_LICENSE}.
  Most papers also state their own license (usually cc-by) in their header lines.

## Layout
- `corpus.jsonl`: passages `{{"_id": "<paper_id>-p<k>", "title", "text", "metadata":
  {{"paper_id", "passage_index", "char_start", "char_end"}}}}`; `text` is the paper's context
  sliced at `[char_start, char_end)`. The source has no title field, so `title` is empty; the
  paper's title is the first line of its `-p0` passage.
- `queries.jsonl`: `{{"_id", "text", "metadata": {{"answers", "paper_id"}}}}`; `_id` is the
  source question id, `answers` the gold answer texts as they appear in the paper.
- `qrels/test.tsv`: `query-id<TAB>corpus-id<TAB>score`, header line, score 1 for every passage
  that an answer span touches.

## How it was built
`python -m bench.datasets.covid_qa {source_name} <this folder>` (the grounded-qa repository).
Each paper is cut into passages of about {MIN_WORDS}–{MAX_WORDS} words, breaking at paragraph
ends where possible, else at sentence ends; a sentence is cut only when it alone exceeds
{MAX_WORDS} words. Answers are located at their `answer_start`, or at the nearest occurrence of
their text within {ANSWER_SLACK} characters where the offset is slightly off; questions with no
locatable answer are dropped. A question asked twice about the same paper becomes one query
with the answers of both.

## Counts
{counts}
"""


def write_view(view: View, out_dir: Path, readme: str) -> None:
    """Write the corpus, queries, qrels and README of ``view`` into ``out_dir``."""
    (out_dir / "qrels").mkdir(parents=True, exist_ok=True)
    for name, rows in (("corpus.jsonl", view.corpus), ("queries.jsonl", view.queries)):
        lines = (json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        (out_dir / name).write_text("".join(lines), encoding="utf-8")
    qrels = "".join(f"{q}\t{d}\t1\n" for q, d in view.qrels)
    (out_dir / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + qrels, encoding="utf-8"
    )
    (out_dir / "README.md").write_text(readme, encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    """Build the view from the command line and print its counts."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="COVID-QA SQuAD-format JSON file")
    parser.add_argument("out_dir", type=Path, help="folder to write the BEIR view into")
    parser.add_argument("--commit", help="source repository commit, recorded in the README")
    args = parser.parse_args(argv)
    raw = args.source.read_bytes()
    view = build_view(json.loads(raw))
    readme = _readme(view.stats, args.source.name, hashlib.sha256(raw).hexdigest(), args.commit)
    write_view(view, args.out_dir, readme)
    print("\n".join(view.stats.lines()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
