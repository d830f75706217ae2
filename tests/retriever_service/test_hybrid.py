"""Search by words, by meaning, or both fused, over the sample help center in ``data/``."""

from __future__ import annotations

from typing import Any

import pytest

from retriever_service.app import create_app
from retriever_service.config import RetrieverConfig
from retriever_service.ingest import IngestSummary, collect, run_ingest
from tests.conftest import DATA_DIR, assert_error_envelope, error_fields
from tests.retriever_service.test_search_quality import client_sender

pytestmark = pytest.mark.slow

# Asked as a new user would; data/guides/troubleshooting.md lists each code word for word, and
# MiniLM embeds the E1–E7 lines almost alike.
EXACT_TERM_QUESTIONS = [
    ("Why does my thermostat show error E3?", "E3: The wires detected do not match"),
]


@pytest.fixture(scope="module")
def kb_client(tmp_path_factory: pytest.TempPathFactory, embedder: Any) -> Any:
    chroma = tmp_path_factory.mktemp("hybrid-chroma")
    app = create_app(RetrieverConfig(chroma_path=str(chroma), chroma_host=None), embedder=embedder)
    client = app.test_client()
    summary = IngestSummary()
    documents = collect([str(DATA_DIR)], summary)
    run_ingest(documents, client_sender(client), summary, batch_size=16, progress=False)
    return client


def search(client: Any, query: str, **options: Any) -> dict[str, Any]:
    response = client.post("/v1/search", json={"query": query, **options})
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def rank_of(results: list[dict[str, Any]], needle: str) -> int | None:
    for rank, hit in enumerate(results, start=1):
        if needle in hit["text"]:
            return rank
    return None


@pytest.mark.parametrize(("question", "needle"), EXACT_TERM_QUESTIONS)
def test_hybrid_finds_exact_terms_that_dense_search_misses(
    kb_client: Any, question: str, needle: str
) -> None:
    dense = search(kb_client, question, top_k=3, mode="dense")["results"]
    hybrid = search(kb_client, question, top_k=3, mode="hybrid")["results"]
    assert rank_of(dense, needle) is None, [h["text"][:60] for h in dense]
    assert rank_of(hybrid, needle) is not None, [h["text"][:60] for h in hybrid]


def test_a_bare_code_is_found_first_by_words(kb_client: Any) -> None:
    for code, needle in (("E7", "E7: A firmware update failed"), ("HT-250", "HT-250")):
        for mode in ("lexical", "hybrid"):
            results = search(kb_client, f"What is {code}?", top_k=3, mode=mode)["results"]
            assert rank_of(results, needle) == 1, (code, mode)


def test_default_mode_is_hybrid_and_the_response_says_how_it_fused(kb_client: Any) -> None:
    body = search(kb_client, "How much does the Household plan cost?")
    assert body["mode"] == "hybrid"
    assert body["fusion"] in ("rrf", "weighted")
    assert 0.0 <= body["dense_weight"] <= 1.0
    assert body["results"]
    for hit in body["results"]:
        assert -1.0 <= hit["score"] <= 1.0
        assert hit["lexical_score"] >= 0.0
        assert hit["fused_score"] is not None
    fused = [h["fused_score"] for h in body["results"]]
    assert fused == sorted(fused, reverse=True)


def test_score_is_cosine_in_every_mode(kb_client: Any) -> None:
    question = "what coin battery does the room sensor take"
    by_mode = {
        mode: search(kb_client, question, top_k=10, mode=mode)["results"]
        for mode in ("dense", "lexical", "hybrid")
    }
    cosine = {h["chunk_id"]: h["score"] for h in by_mode["dense"]}
    for mode in ("lexical", "hybrid"):
        shared = [h for h in by_mode[mode] if h["chunk_id"] in cosine]
        assert shared, mode
        for hit in shared:
            assert hit["score"] == pytest.approx(cosine[hit["chunk_id"]], abs=2e-3), mode
    assert all(h["lexical_score"] is None and h["fused_score"] is None for h in by_mode["dense"])
    lexical = [h["lexical_score"] for h in by_mode["lexical"]]
    assert lexical == sorted(lexical, reverse=True)
    assert all(s > 0 for s in lexical)


def test_min_score_filters_on_cosine_in_hybrid_mode(kb_client: Any) -> None:
    question = "What does code E7 on the display mean?"
    everything = search(kb_client, question, top_k=20, mode="hybrid")["results"]
    cut = sorted(h["score"] for h in everything)[len(everything) // 2]
    kept = search(kb_client, question, top_k=20, mode="hybrid", min_score=cut)["results"]
    assert kept
    assert all(h["score"] >= cut for h in kept)
    expected = [h["chunk_id"] for h in everything if h["score"] >= cut]
    # The same order; chunks ranked past the first 20 may fill the places of those cut.
    assert [h["chunk_id"] for h in kept][: len(expected)] == expected


def test_where_filters_lexical_and_hybrid_results(kb_client: Any) -> None:
    for mode in ("lexical", "hybrid"):
        body = search(kb_client, "E7 firmware", top_k=10, mode=mode, where={"source": "faq.csv"})
        assert all(h["metadata"].get("source") == "faq.csv" for h in body["results"]), mode


def test_query_terms_say_how_rare_each_word_is_and_where_it_was_found(kb_client: Any) -> None:
    body = search(kb_client, "Why does my thermostat show error E3?", top_k=5)
    terms = {t["term"]: t for t in body["query_terms"]}
    assert list(terms) == ["why", "does", "my", "thermostat", "show", "error", "e3"]
    assert body["collection_chunks"] >= 100
    # "thermostat" is everywhere in a thermostat help center; "e3" is in one chunk.
    assert terms["e3"]["document_frequency"] == 1
    assert terms["thermostat"]["document_frequency"] > 20
    assert terms["e3"]["idf"] > terms["error"]["idf"] > terms["thermostat"]["idf"] > 0
    e3_rank = rank_of(body["results"], "E3:")
    assert terms["e3"]["in_results"] is True
    assert terms["e3"]["result_ranks"] == [e3_rank]
    for term in terms.values():
        assert term["in_results"] == bool(term["result_ranks"])
        for rank in term["result_ranks"]:
            text = body["results"][rank - 1]["text"].lower()
            assert term["term"] in text or term["term"][:5] in text
    missing = search(kb_client, "Does Halo support Z-Wave?", top_k=5)["query_terms"]
    z_wave = next(t for t in missing if t["term"] == "z-wave")
    assert z_wave["document_frequency"] == 0
    assert z_wave["in_results"] is False
    assert search(kb_client, "E3", mode="dense")["query_terms"] is None


def test_a_query_of_stop_words_is_empty_lexically_and_dense_in_hybrid(kb_client: Any) -> None:
    for query in ("is it that?", "the and of!!", "?!..."):
        lexical = search(kb_client, query, mode="lexical")
        assert lexical["results"] == []
        assert lexical["query_terms"] == []
        hybrid = search(kb_client, query, top_k=5, mode="hybrid")
        dense = search(kb_client, query, top_k=5, mode="dense")
        assert hybrid["query_terms"] == []
        assert [h["chunk_id"] for h in hybrid["results"]] == [
            h["chunk_id"] for h in dense["results"]
        ]


def test_lexical_search_on_an_empty_collection_is_empty(kb_client: Any) -> None:
    created = kb_client.post(
        "/v1/documents", json={"collection": "soon-empty", "documents": [{"id": "x", "text": "E3"}]}
    )
    assert created.status_code == 200
    assert kb_client.delete("/v1/documents/x?collection=soon-empty").status_code == 200
    for mode in ("lexical", "hybrid"):
        body = search(kb_client, "E3", mode=mode, collection="soon-empty")
        assert body["results"] == []
    # The default collection of a fresh app is empty too.
    assert search(kb_client, "E3 thermostat", mode="lexical", collection="documents")["results"]


def test_bad_search_options_are_422_naming_the_field(kb_client: Any) -> None:
    for body, field in (
        ({"query": "E3", "mode": "semantic"}, "mode"),
        ({"query": "E3", "mode": 1}, "mode"),
        ({"query": "E3", "fusion": "sum"}, "fusion"),
        ({"query": "E3", "dense_weight": 1.5}, "dense_weight"),
        ({"query": "E3", "dense_weight": "0.5"}, "dense_weight"),
    ):
        error = assert_error_envelope(kb_client.post("/v1/search", json=body), 422)
        assert field in error_fields(error), (body, error)


def test_fusion_options_per_request_move_the_ranking(kb_client: Any) -> None:
    question = "What does code E7 on the display mean?"

    def order(**options: Any) -> list[str]:
        return [h["chunk_id"] for h in search(kb_client, question, top_k=5, **options)["results"]]

    weighted = search(kb_client, question, top_k=5, fusion="weighted", dense_weight=0.0)
    assert weighted["fusion"] == "weighted"
    assert weighted["dense_weight"] == 0.0
    # All weight on one side gives that side's own order.
    assert order(fusion="weighted", dense_weight=0.0) == order(mode="lexical")
    assert order(fusion="rrf", dense_weight=1.0) == order(mode="dense")
    assert order(fusion="weighted", dense_weight=1.0) == order(mode="dense")
    assert order(fusion="rrf", dense_weight=0.5) != order(mode="dense")


def test_the_write_log_collection_is_hidden_and_reserved(kb_client: Any) -> None:
    assert "retriever-write-log" not in kb_client.get("/v1/collections").get_json()["collections"]
    for response in (
        kb_client.post("/v1/search", json={"query": "x", "collection": "retriever-write-log"}),
        kb_client.post(
            "/v1/documents",
            json={"collection": "retriever-write-log", "documents": [{"text": "x"}]},
        ),
        kb_client.delete("/v1/collections/retriever-write-log"),
    ):
        assert_error_envelope(response, 422)
