"""Build a QA fine-tuning set from SubjQA: ``python -m bench.datasets.subjqa --source S --out F``.

S is a git directory or a checkout of github.com/megagonlabs/SubjQA (built against commit
6ea88c77802798b4a09a8218bd6bbde5b9cf4278); only ``SubjQA/<domain>/splits/train.csv`` is read.
Each CSV row is one annotator's reading of one question-review pair (``q_review_id``); most
pairs have two rows. The columns used are ``question``, ``review`` (the product, hotel or
restaurant review, always ending in `` ANSWERNOTFOUND``), ``human_ans_spans`` (the marked span,
or ``ANSWERNOTFOUND``), ``human_ans_indices`` (``"(start, end)"`` into ``review``),
``review_id``, ``nn_mod`` and ``nn_asp``.

F (e.g. ``/work/eval-data/subjqa/train.jsonl``) receives one line per sampled answerable pair,
``{"id": "<domain>-<q_review_id>", "question", "answer", "context"}``. Next to it go
``unanswerable.jsonl`` (``{"id", "question", "context"}``, pairs every annotator marked
ANSWERNOTFOUND: natural refusal examples), ``meta.json`` and ``README.txt``.

``human_ans_spans`` is tokenized text ("did n't", "$ 35", "fast , cheap"), so it is found verbatim
in the review only about half the time. The answer is therefore the review text at
``human_ans_indices`` when it equals the span once whitespace is ignored, else the span itself
where it occurs verbatim in the review; spans that match neither (annotators who picked
non-adjacent words, or indices that run far past the span) are dropped. Pairs whose annotators
disagree on whether there is an answer go to neither file. Contexts are the review without its
ANSWERNOTFOUND marker, HTML entities decoded, cut to at most MAX_CONTEXT_CHARS characters
around the answer (around the review's neighbouring opinion for unanswerable pairs) at
sentence ends, or at word ends where one sentence is too long.

License: the source repository has no LICENSE file. Its Readme says each domain's data falls
under the license of the review data set it was drawn from: the Amazon review data from UCSD
(books, movies, electronics, grocery), the TripAdvisor data set from UIUC (tripadvisor) and the
Yelp Dataset (restaurants, whose terms allow only non-commercial, academic use). Cite Bjerva et
al., "SubjQA: A Dataset for Subjectivity and Review Comprehension", EMNLP 2020.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import html
import io
import itertools
import json
import random
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

SOURCE_REPO = "https://github.com/megagonlabs/SubjQA"
SOURCE_COMMIT = "6ea88c77802798b4a09a8218bd6bbde5b9cf4278"  # the commit this was built against
SOURCE_LICENSE = (
    "no LICENSE file; per the Readme each domain is under the license of its source data: "
    "Amazon review data, UCSD (books, movies, electronics, grocery); TripAdvisor data set, "
    "UIUC (tripadvisor); Yelp Dataset terms, non-commercial academic use only (restaurants)"
)
DOMAINS = ("books", "electronics", "grocery", "movies", "restaurants", "tripadvisor")
SPLIT_PATH = "SubjQA/{domain}/splits/train.csv"
NOT_FOUND = "ANSWERNOTFOUND"
PER_DOMAIN = 150
SEED = 0
MAX_CONTEXT_CHARS = 1200

_INDICES = re.compile(r"\(\s*(\d+)\s*,\s*(\d+)\s*\)")
_SPACE = re.compile(r"\s+")
# A sentence ends at . ! or ?, closing quotes or brackets included, before a space or, since the
# scraped reviews often lost the space between sentences ("eat.The taste"), a capital letter.
_SENTENCE_END = re.compile(r"[.!?]+[\"'”’)\]]*(?=\s|[A-Z\"“])")
_WORD = re.compile(r"\S+")
_EDGE_PUNCTUATION = ",;:"  # trailing or leading list punctuation that spans often carry

T = TypeVar("T")


@dataclass
class Pair:
    """One question-review pair with every annotator's reading of it."""

    id: str
    domain: str
    question: str
    review_id: str
    context: str  # the review without its ANSWERNOTFOUND marker, HTML entities not yet decoded
    opinion: str  # the neighbouring opinion's modifier, the words the review was picked for
    not_found: int = 0  # annotators who marked ANSWERNOTFOUND
    unlocated: int = 0  # annotators whose span could not be found in the review
    answers: list[tuple[int, int]] = field(default_factory=list)  # located spans, row order


@dataclass
class DomainStats:
    """Counts of what the build read, kept and dropped for one domain."""

    rows: int = 0
    pairs: int = 0
    duplicate_rows: int = 0
    duplicate_pairs: int = 0  # same question text and review under another q_review_id
    spans_at_indices: int = 0
    spans_detokenized: int = 0  # matched the review at their indices once whitespace is ignored
    spans_elsewhere: int = 0  # found verbatim away from their indices
    spans_unlocated: int = 0
    spans_not_found: int = 0
    answerable: int = 0
    unanswerable: int = 0
    disagreeing: int = 0  # some annotators marked an answer, others ANSWERNOTFOUND
    all_unlocated: int = 0
    answers_unbuilt: int = 0  # longer than MAX_CONTEXT_CHARS, or an entity cut at an edge
    written_answerable: int = 0
    written_unanswerable: int = 0
    contexts_cut: int = 0  # written records whose context is shorter than the review


def read_split(source: Path, domain: str) -> str | None:
    """Return the text of a domain's train split, or None where the source lacks it."""
    path = SPLIT_PATH.format(domain=domain)
    if (source / path).is_file():
        text = (source / path).read_text(encoding="utf-8")
    else:
        shown = subprocess.run(
            ["git", "--git-dir", str(source), "show", f"HEAD:{path}"],
            capture_output=True,
            check=False,
        )
        if shown.returncode != 0:
            return None
        text = shown.stdout.decode("utf-8")
    # A mirror may hold a Git LFS pointer instead of the file; that is as good as absent.
    return None if text.startswith("version https://git-lfs") else text


def source_commit(source: Path) -> str | None:
    """Return the HEAD commit of a git directory or checkout, or None when it is neither."""
    # -C only on a checkout's own root: inside another repository it would name that one.
    tries = [["--git-dir", str(source)]] + (
        [["-C", str(source)]] if (source / ".git").exists() else []
    )
    for args in tries:
        result = subprocess.run(
            ["git", *args, "rev-parse", "HEAD"], capture_output=True, text=True, check=False
        )
        if result.returncode == 0:
            return result.stdout.strip()
    return None


def _squash(text: str) -> str:
    """Return ``text`` without whitespace, to compare tokenized spans with the review."""
    return _SPACE.sub("", text)


def _trim(context: str, start: int, end: int) -> tuple[int, int] | None:
    """Return the span without edge spaces and list punctuation, or None when no word is left."""
    while start < end and (context[start].isspace() or context[start] in _EDGE_PUNCTUATION):
        start += 1
    while end > start and (context[end - 1].isspace() or context[end - 1] in _EDGE_PUNCTUATION):
        end -= 1
    return (start, end) if any(ch.isalnum() for ch in context[start:end]) else None


def locate_answer(
    context: str, span: str, indices: str, stats: DomainStats
) -> tuple[int, int] | None:
    """Return where an annotator's answer span lies in ``context``, or None when it is absent."""
    text = span.strip()
    match = _INDICES.fullmatch(indices.strip())
    if text and match:
        start, end = int(match[1]), int(match[2])
        if end <= len(context) and _squash(context[start:end]) == _squash(text):
            exact = context[start:end].strip() == text
            stats.spans_at_indices += exact
            stats.spans_detokenized += not exact
            return _trim(context, start, end)
    found = [m.start() for m in re.finditer(re.escape(text), context)] if text else []
    if not found:
        return None
    # Of several occurrences the one nearest the recorded start is most likely the marked one.
    near = int(match[1]) if match else 0
    start = min(found, key=lambda i: (abs(i - near), i))
    stats.spans_elsewhere += 1
    return _trim(context, start, start + len(text))


def read_pairs(text: str, domain: str, stats: DomainStats) -> list[Pair]:
    """Group a train split's rows into question-review pairs, in order of first appearance."""
    pairs: dict[str, Pair] = {}
    seen_rows: set[tuple[str, ...]] = set()
    seen_questions: set[tuple[str, str]] = set()
    repeated: set[str] = set()  # q_review_ids of pairs that repeat an earlier pair
    for row in csv.DictReader(io.StringIO(text, newline="")):
        stats.rows += 1
        key = tuple(row.values())
        stats.duplicate_rows += key in seen_rows
        seen_rows.add(key)
        pair = pairs.get(row["q_review_id"])
        if row["q_review_id"] in repeated:
            continue
        if pair is None:
            question = " ".join(row["question"].split())
            asked = (question.lower(), row["review_id"])
            if asked in seen_questions:
                stats.duplicate_pairs += 1
                repeated.add(row["q_review_id"])
                continue
            seen_questions.add(asked)
            review = row["review"].rstrip()
            review = review.removesuffix(NOT_FOUND).rstrip()
            pair = pairs[row["q_review_id"]] = Pair(
                id=f"{domain}-{row['q_review_id']}",
                domain=domain,
                question=question,
                review_id=row["review_id"],
                context=review,
                opinion=row["nn_mod"].strip() or row["nn_asp"].strip(),
            )
        if row["human_ans_spans"].strip() == NOT_FOUND:
            stats.spans_not_found += 1
            pair.not_found += 1
            continue
        span = locate_answer(pair.context, row["human_ans_spans"], row["human_ans_indices"], stats)
        if span is None:
            stats.spans_unlocated += 1
            pair.unlocated += 1
        else:
            pair.answers.append(span)
    stats.pairs = len(pairs) + stats.duplicate_pairs
    return list(pairs.values())


def context_window(text: str, start: int, end: int, limit: int) -> tuple[int, int] | None:
    """Return the widest run of whole sentences (else words) around a span that fits ``limit``."""
    for pieces in (_sentences(text), [m.span() for m in _WORD.finditer(text)]):
        first = next((k for k, (_, b) in enumerate(pieces) if b > start), None)
        if first is None:
            continue
        last = max(k for k, (a, _) in enumerate(pieces) if a < end) if end > start else first
        if pieces[last][1] - pieces[first][0] > limit:
            continue
        grown = True
        while grown:
            grown = False
            # Grow one piece to the right, then one to the left, so the span stays near the middle.
            if last + 1 < len(pieces) and pieces[last + 1][1] - pieces[first][0] <= limit:
                last, grown = last + 1, True
            if first > 0 and pieces[last][1] - pieces[first - 1][0] <= limit:
                first, grown = first - 1, True
        return pieces[first][0], pieces[last][1]
    return None


def _sentences(text: str) -> list[tuple[int, int]]:
    """Return the char spans of the sentences of ``text``, edge whitespace excluded."""
    cuts = [0, *(m.end() for m in _SENTENCE_END.finditer(text)), len(text)]
    spans = []
    for a, b in itertools.pairwise(cuts):
        piece = text[a:b]
        if piece.strip():
            lead = len(piece) - len(piece.lstrip())
            spans.append((a + lead, a + len(piece.rstrip())))
    return spans


def _chosen_answer(pair: Pair) -> tuple[int, int]:
    """Return the span most annotators marked, the earliest marked one on a tie."""
    votes = Counter(pair.answers)
    return max(pair.answers, key=lambda span: (votes[span], -pair.answers.index(span)))


def answerable_record(pair: Pair, stats: DomainStats) -> dict[str, str] | None:
    """Return the training record of an answerable pair, or None when it cannot be built."""
    start, end = _chosen_answer(pair)
    window = context_window(pair.context, start, end, MAX_CONTEXT_CHARS)
    answer = html.unescape(pair.context[start:end])
    context = html.unescape(pair.context[window[0] : window[1]]) if window else ""
    if answer not in context:  # no window, or an entity cut in half at the span's edge
        stats.answers_unbuilt += 1
        return None
    return {"id": pair.id, "question": pair.question, "answer": answer, "context": context}


def unanswerable_record(pair: Pair) -> dict[str, str]:
    """Return the refusal record of a pair no annotator found an answer for."""
    # Centre the cut on the opinion the review was chosen for: the passage that looks most
    # like an answer, which is what makes declining here worth learning.
    found = re.search(rf"\b{re.escape(pair.opinion)}\b", pair.context, re.IGNORECASE)
    at = found.span() if found and pair.opinion else (0, 0)
    window = context_window(pair.context, *at, MAX_CONTEXT_CHARS) or (0, MAX_CONTEXT_CHARS)
    context = html.unescape(pair.context[window[0] : window[1]])
    return {"id": pair.id, "question": pair.question, "context": context}


def _draw(items: list[T], count: int | None, rng: random.Random) -> list[T]:
    """Return ``count`` of ``items`` drawn by ``rng`` (all when None), in their original order."""
    if count is None or count >= len(items):
        return list(items)
    return [items[k] for k in sorted(rng.sample(range(len(items)), count))]


def _build_domain(
    text: str, domain: str, per_domain: int, unanswerable_per_domain: int | None, seed: int
) -> tuple[list[dict[str, str]], list[dict[str, str]], DomainStats]:
    """Return the answerable and unanswerable records sampled from one domain's train split."""
    stats = DomainStats()
    answerable: list[Pair] = []
    unanswerable: list[Pair] = []
    for pair in read_pairs(text, domain, stats):
        if pair.not_found and (pair.answers or pair.unlocated):
            stats.disagreeing += 1
        elif pair.not_found:
            unanswerable.append(pair)
        elif pair.answers:
            answerable.append(pair)
        else:
            stats.all_unlocated += 1
    stats.answerable, stats.unanswerable = len(answerable), len(unanswerable)
    # Build every answerable record before drawing, so a pair that fails to build does not
    # leave the domain short. A string seed hashes the same in every process.
    rng = random.Random(f"subjqa:{seed}:{domain}")
    built = ((pair, answerable_record(pair, stats)) for pair in answerable)
    drawn = _draw([(p, r) for p, r in built if r is not None], per_domain, rng)
    records = [record for _, record in drawn]
    refusals = [
        unanswerable_record(pair) for pair in _draw(unanswerable, unanswerable_per_domain, rng)
    ]
    whole = {pair.id: html.unescape(pair.context) for pair, _ in drawn}
    whole |= {pair.id: html.unescape(pair.context) for pair in unanswerable}
    stats.contexts_cut = sum(row["context"] != whole[row["id"]] for row in records + refusals)
    stats.written_answerable, stats.written_unanswerable = len(records), len(refusals)
    return records, refusals, stats


def _write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Write ``rows`` to ``path`` as JSON lines."""
    lines = (json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    path.write_text("".join(lines), encoding="utf-8")


def _readme(meta: dict[str, Any]) -> str:
    """Return the README.txt that describes a built set."""
    counts = "\n".join(
        f"  {domain}: {stats['written_answerable']} answerable of {stats['answerable']}, "
        f"{stats['written_unanswerable']} unanswerable of {stats['unanswerable']}"
        for domain, stats in meta["domains"].items()
    )
    missing = ", ".join(meta["missing_domains"]) or "none"
    return f"""SubjQA QA fine-tuning set

Source: {SOURCE_REPO} at commit {meta["commit"] or "not recorded"}, train splits only.
License: {SOURCE_LICENSE}.
Citation: Bjerva et al., "SubjQA: A Dataset for Subjectivity and Review Comprehension",
EMNLP 2020.

Files:
  {meta["files"]["answerable"]}: {{"id", "question", "answer", "context"}} per answerable
    question-review pair; answer is the review text an annotator marked, context the review
    cut to at most {MAX_CONTEXT_CHARS} characters around it.
  {meta["files"]["unanswerable"]}: {{"id", "question", "context"}} per pair that every
    annotator marked ANSWERNOTFOUND.
  meta.json: counts, settings and source file hashes.

Built with: python -m bench.datasets.subjqa --source <SubjQA git dir or checkout> --out <file>
  --per-domain {meta["per_domain"]} --seed {meta["seed"]}
Domains missing from the source (skipped): {missing}

Counts:
{counts}
"""


def build_training_set(
    mirror_or_dir: Path | str,
    out_path: Path | str,
    *,
    domains: Sequence[str] = DOMAINS,
    per_domain: int = PER_DOMAIN,
    seed: int = SEED,
    unanswerable_per_domain: int | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Write the answerable and unanswerable sets, README.txt and meta.json; return the meta."""
    source, out_path = Path(mirror_or_dir), Path(out_path)
    out_dir = out_path.parent
    unanswerable_path = out_dir / "unanswerable.jsonl"
    answerable: list[dict[str, str]] = []
    unanswerable: list[dict[str, str]] = []
    meta: dict[str, Any] = {
        "source": SOURCE_REPO,
        "commit": source_commit(source),
        "license": SOURCE_LICENSE,
        "split": "train",
        "seed": seed,
        "per_domain": per_domain,
        "unanswerable_per_domain": unanswerable_per_domain,
        "max_context_chars": MAX_CONTEXT_CHARS,
        "files": {"answerable": out_path.name, "unanswerable": unanswerable_path.name},
        "source_sha256": {},
        "missing_domains": [],
        "domains": {},
    }
    for domain in domains:
        text = read_split(source, domain)
        if text is None:
            log(f"{domain}: train split missing from the source, skipped")
            meta["missing_domains"].append(domain)
            continue
        records, refusals, stats = _build_domain(
            text, domain, per_domain, unanswerable_per_domain, seed
        )
        answerable += records
        unanswerable += refusals
        meta["source_sha256"][SPLIT_PATH.format(domain=domain)] = hashlib.sha256(
            text.encode("utf-8")
        ).hexdigest()
        meta["domains"][domain] = asdict(stats)
    meta["answerable"], meta["unanswerable"] = len(answerable), len(unanswerable)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_jsonl(out_path, answerable)
    _write_jsonl(unanswerable_path, unanswerable)
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    (out_dir / "README.txt").write_text(_readme(meta), encoding="utf-8")
    return meta


def main(argv: Sequence[str] | None = None) -> int:
    """Build the set from the command line and print its counts."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True, help="SubjQA git dir or checkout")
    parser.add_argument("--out", type=Path, required=True, help="answerable JSONL file to write")
    parser.add_argument("--per-domain", type=int, default=PER_DOMAIN, help="answerable per domain")
    parser.add_argument(
        "--unanswerable-per-domain", type=int, help="unanswerable per domain (default: all)"
    )
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--domains", nargs="+", default=list(DOMAINS), choices=DOMAINS)
    args = parser.parse_args(argv)
    meta = build_training_set(
        args.source,
        args.out,
        domains=args.domains,
        per_domain=args.per_domain,
        seed=args.seed,
        unanswerable_per_domain=args.unanswerable_per_domain,
        log=lambda line: print(line, file=sys.stderr),
    )
    for domain, stats in meta["domains"].items():
        print(f"{domain}: " + ", ".join(f"{k} {v}" for k, v in stats.items()))
    print(f"answerable: {meta['answerable']} -> {args.out}")
    print(f"unanswerable: {meta['unanswerable']} -> {args.out.parent / 'unanswerable.jsonl'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
