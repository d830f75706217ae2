"""The retriever's file upload and document list, on the real model and a real embedded Chroma."""

from __future__ import annotations

import io
from typing import Any

from retriever_service.loaders import InProcessParser, LoadedDocument, load_bytes
from tests.conftest import assert_error_envelope
from tests.retriever_service.sample_files import HTML_PAGE, docx_bytes, image_only_pdf, pdf_bytes

MANUAL = [
    "Halo thermostat manual. This manual explains installation and everyday use.",
    "Troubleshooting. Code E7 on the display means the room sensor lost its radio link. "
    "Move the sensor closer to the thermostat and press its pairing button.",
    "Warranty. The thermostat is covered for five years from the date of purchase.",
]


def upload(client: Any, *files: tuple[str, bytes], status: int = 200, **form: str) -> Any:
    data: dict[str, Any] = dict(form)
    data["file"] = [(io.BytesIO(content), name) for name, content in files]
    response = client.post("/v1/files", data=data, content_type="multipart/form-data")
    assert response.status_code == status, response.get_json()
    return response.get_json()


def search(client: Any, query: str, **options: Any) -> list[dict[str, Any]]:
    response = client.post("/v1/search", json={"query": query, **options})
    assert response.status_code == 200, response.get_json()
    return response.get_json()["results"]


def test_pdf_upload_is_cited_by_page_and_section_and_reuploads_are_idempotent(client: Any) -> None:
    pdf = pdf_bytes(MANUAL, bookmarks={1: "Introduction", 2: "Troubleshooting"})
    [result] = upload(client, ("manual.pdf", pdf))["files"]
    assert result["status"] == "created"
    assert result["documents"][0]["id"] == "manual.pdf"
    assert result["chunks"] >= 3

    [hit, *_] = search(client, "What does code E7 on the display mean?", top_k=3)
    assert hit["document_id"] == "manual.pdf"
    assert "Code E7" in hit["text"]
    assert hit["metadata"]["page"] == 2
    assert hit["metadata"]["section"] == "Troubleshooting"
    assert hit["metadata"]["source"] == "manual.pdf"
    # No chunk crosses a page: the warranty (page 3) is not in the E7 chunk.
    assert "Warranty" not in hit["text"]

    [again] = upload(client, ("manual.pdf", pdf))["files"]
    assert again["status"] == "unchanged"

    changed = pdf_bytes([*MANUAL[:2], "Warranty. Covered for ten years, parts and labour."])
    [updated] = upload(client, ("manual.pdf", changed))["files"]
    assert updated["status"] == "updated"
    texts = " ".join(h["text"] for h in search(client, "warranty years", top_k=10))
    assert "ten years" in texts
    assert "five years" not in texts
    listed = client.get("/v1/documents").get_json()
    assert [d["id"] for d in listed["documents"]] == ["manual.pdf"]


def test_each_file_gets_its_own_result_and_bad_ones_store_nothing(client: Any) -> None:
    files = upload(
        client,
        ("guide.docx", docx_bytes([("Heading 1", "Wiring"), ("Normal", "Blue goes to C.")])),
        ("wiring.html", HTML_PAGE.encode()),
        ("scan.pdf", image_only_pdf()),
        ("secret.pdf", pdf_bytes(MANUAL, user_password="pw")),
        ("setup.exe", b"MZ\x90\x00"),
        ("broken.docx", b"not a zip"),
    )["files"]
    by_name = {f["file"]: f for f in files}
    assert by_name["guide.docx"]["status"] == "created"
    assert by_name["wiring.html"]["status"] == "created"
    for name, code in [
        ("scan.pdf", "no_text"),
        ("secret.pdf", "encrypted"),
        ("setup.exe", "unsupported_type"),
        ("broken.docx", "corrupt"),
    ]:
        assert by_name[name]["status"] == "error", by_name[name]
        assert by_name[name]["error"]["code"] == code
        assert by_name[name]["error"]["message"]
        assert by_name[name]["chunks"] == 0
    listed = client.get("/v1/documents").get_json()
    assert sorted(d["id"] for d in listed["documents"]) == ["guide.docx", "wiring.html"]
    docx_entry = next(d for d in listed["documents"] if d["id"] == "guide.docx")
    assert docx_entry["type"] == "docx"
    assert docx_entry["source"] == "guide.docx"
    assert docx_entry["ingested_at"].endswith("Z")
    [hit] = search(client, "blue wire", top_k=1, where={"source": "guide.docx"})
    assert hit["metadata"]["section"] == "Wiring"
    # The page fits one chunk: it is labelled with the heading it starts under.
    [hit] = search(client, "terminal colours", top_k=1, where={"source": "wiring.html"})
    assert hit["metadata"]["section"] == "Wiring the Halo heat pump"


def test_upload_without_file_is_422_and_too_large_is_413(make_app: Any) -> None:
    client = make_app(max_upload_bytes=4096).test_client()
    response = client.post("/v1/files", data={}, content_type="multipart/form-data")
    error = assert_error_envelope(response, 422, "validation_error")
    assert error["details"][0]["field"] == "file"
    big = ("big.txt", b"word " * 2000)
    response = client.post(
        "/v1/files",
        data={"file": [(io.BytesIO(big[1]), big[0])]},
        content_type="multipart/form-data",
    )
    error = assert_error_envelope(response, 413)
    assert "4096" in error["message"]
    assert client.get("/v1/documents").get_json()["total"] == 0


def test_the_same_file_by_upload_or_by_the_cli_payload_is_one_document(client: Any) -> None:
    pdf = pdf_bytes(MANUAL)
    [loaded] = list(load_bytes("manual.pdf", pdf, InProcessParser()))
    assert isinstance(loaded, LoadedDocument)
    response = client.post("/v1/documents", json={"documents": [loaded.as_payload()]})
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["results"][0]["status"] == "created"
    [result] = upload(client, ("manual.pdf", pdf))["files"]
    assert result["status"] == "unchanged"
    assert client.get("/v1/documents").get_json()["total"] == 1


def test_documents_are_listed_a_page_at_a_time(client: Any) -> None:
    documents = [{"id": f"note-{i}", "text": f"Note {i} about the boiler."} for i in range(7)]
    assert client.post("/v1/documents", json={"documents": documents}).status_code == 200
    seen: list[str] = []
    offset: int | None = 0
    while offset is not None:
        page = client.get(f"/v1/documents?limit=3&offset={offset}").get_json()
        assert page["total"] == 7
        assert len(page["documents"]) <= 3
        seen += [d["id"] for d in page["documents"]]
        offset = page["next_offset"]
    assert sorted(seen) == sorted(d["id"] for d in documents)
    assert_error_envelope(client.get("/v1/documents?limit=0"), 422)


def test_segments_out_of_the_text_are_422(client: Any) -> None:
    response = client.post(
        "/v1/documents",
        json={"documents": [{"id": "x", "text": "short", "segments": [{"start": 0, "end": 99}]}]},
    )
    error = assert_error_envelope(response, 422)
    assert "segments" in error["message"] or "segments" in str(error.get("details"))


def test_uploads_keep_the_ingest_rules_and_a_file_uploaded_again_replaces_what_it_held(
    make_app: Any,
) -> None:
    client = make_app(max_documents_per_request=3).test_client()
    faq = b"question,answer,source\nIs there an app?,Yes.,spoofed\nDoes it need Wi-Fi?,Yes.,x\n"
    [first] = upload(client, ("faq.csv", faq))["files"]
    assert first["status"] == "created"
    old_ids = {d["id"] for d in first["documents"]}
    # A column named "source" cannot hide where a record came from.
    listed = client.get("/v1/documents").get_json()["documents"]
    assert {d["source"] for d in listed} == {"faq.csv"}

    edited = b'question,answer\nIs there an app?,"Yes, on iOS."\nDoes it need Wi-Fi?,Yes.\n'
    [second] = upload(client, ("faq.csv", edited))["files"]
    assert second["status"] == "updated"
    new_ids = {d["id"] for d in second["documents"]}
    listed = {d["id"] for d in client.get("/v1/documents").get_json()["documents"]}
    # The edited row's old version is gone, not left searchable beside the new one.
    assert listed == new_ids
    assert len(old_ids - new_ids) == 1

    too_many = b"question,answer\n" + b"".join(b"Q%d?,A%d.\n" % (i, i) for i in range(4))
    [refused] = upload(client, ("big.csv", too_many))["files"]
    assert refused["status"] == "error"
    assert refused["error"]["code"] == "too_many_documents"
    long_id = ('{"id": "' + "x" * 600 + '", "text": "A note."}\n{"text": "Fine."}\n').encode()
    [partly] = upload(client, ("notes.jsonl", long_id))["files"]
    assert partly["status"] == "created"
    assert len(partly["documents"]) == 1
    assert "512" in partly["problems"][0]["message"]


def test_segments_must_cover_all_the_text(client: Any) -> None:
    response = client.post(
        "/v1/documents",
        json={
            "documents": [
                {"id": "x", "text": "Page one.\n\nPage two.", "segments": [{"start": 0, "end": 9}]}
            ]
        },
    )
    error = assert_error_envelope(response, 422)
    assert "no segment" in str(error)
