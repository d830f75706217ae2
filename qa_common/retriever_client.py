"""The one client of the retriever's API, for the gateway and the tools alike."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from qa_common.http_client import ServiceClient, internal_api_key


class RetrieverClient(ServiceClient):
    """Calls a retriever (one or more replicas): search, embed, documents, collections.

    ``api_key`` defaults to ``INTERNAL_API_KEY`` from the environment (what the tools want); an
    empty string sends none. ``search_mode``, when set, is named in every search: the
    retriever's own default may differ between versions.
    """

    def __init__(
        self,
        base_url: str | Sequence[str],
        *,
        search_mode: str | None = None,
        read_timeout_s: float = 300.0,
        api_key: str | None = None,
        **kwargs: Any,
    ) -> None:
        if api_key is None:
            api_key = internal_api_key()
        super().__init__(
            "retriever", base_url, read_timeout_s=read_timeout_s, api_key=api_key, **kwargs
        )
        self.search_mode = search_mode

    def search(
        self, query: str, top_k: int = 5, collection: str | None = None, **options: Any
    ) -> dict[str, Any]:
        """Return the search response: ``results`` and, lexically, ``query_terms``."""
        body: dict[str, Any] = {"query": query, "top_k": top_k}
        if collection:
            body["collection"] = collection
        if options.get("mode") is None and self.search_mode:
            options["mode"] = self.search_mode
        body.update({k: v for k, v in options.items() if v is not None})
        # A search only reads: if a replica dies with it, the next replica may answer it.
        return self.request_json("POST", "/v1/search", json=body, idempotent=True)

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        body = {"texts": list(texts)}
        return list(
            self.request_json("POST", "/v1/embed", json=body, idempotent=True)["embeddings"]
        )

    def ingest(
        self, documents: Sequence[dict[str, Any]], collection: str | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"documents": list(documents)}
        if collection:
            body["collection"] = collection
        return self.request_json("POST", "/v1/documents", json=body)

    def list_documents(
        self, collection: str | None = None, *, limit: int = 50, offset: int = 0
    ) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if collection:
            params["collection"] = collection
        return self.request_json("GET", "/v1/documents", params=params)

    def delete_document(self, document_id: str, collection: str | None = None) -> dict[str, Any]:
        params = {"collection": collection} if collection else None
        return self.request_json("DELETE", document_path(document_id), params=params)

    def stats(self, collection: str | None = None) -> dict[str, Any]:
        params = {"collection": collection} if collection else None
        return self.request_json("GET", "/v1/stats", params=params)

    def delete_collection(self, name: str) -> dict[str, Any]:
        return self.request_json("DELETE", f"/v1/collections/{quote(name, safe='')}")

    def ready(self, read_timeout_s: float = 5.0) -> dict[str, Any]:
        return self.request_json("GET", "/readyz", read_timeout_s=read_timeout_s)


def document_path(document_id: str) -> str:
    """Return a document's URL path with every "/" and "." escaped.

    HTTP clients resolve "." and ".." segments, which would send "notes/../faq-001" to the
    document "faq-001"; the retriever decodes them back.
    """
    return "/v1/documents/" + quote(document_id, safe="").replace(".", "%2E")
