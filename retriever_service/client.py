"""HTTP client for the retriever API, used by the ingestion and evaluation tools."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from qa_common.http_client import ServiceClient


class RetrieverClient(ServiceClient):
    """Calls a running retriever over HTTP."""

    def __init__(self, base_url: str, *, read_timeout_s: float = 300.0, **kwargs: Any) -> None:
        # The tools (ingest, evaluate, benchmarks) send the key the services share, if set.
        kwargs.setdefault("api_key", os.environ.get("INTERNAL_API_KEY") or None)
        super().__init__("retriever", base_url, read_timeout_s=read_timeout_s, **kwargs)

    def ingest(
        self, documents: Sequence[dict[str, Any]], collection: str | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"documents": list(documents)}
        if collection:
            body["collection"] = collection
        return self.request_json("POST", "/v1/documents", json=body)

    def search(self, query: str, *, top_k: int = 5, **options: Any) -> dict[str, Any]:
        body = {
            "query": query,
            "top_k": top_k,
            **{k: v for k, v in options.items() if v is not None},
        }
        return self.request_json("POST", "/v1/search", json=body)

    def stats(self, collection: str | None = None) -> dict[str, Any]:
        params = {"collection": collection} if collection else None
        return self.request_json("GET", "/v1/stats", params=params)

    def list_documents(
        self, collection: str | None = None, *, limit: int = 50, offset: int = 0
    ) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if collection:
            params["collection"] = collection
        return self.request_json("GET", "/v1/documents", params=params)

    def delete_document(self, document_id: str, collection: str | None = None) -> dict[str, Any]:
        params = {"collection": collection} if collection else None
        # "." escaped too: HTTP clients resolve "." and ".." path segments.
        path = "/v1/documents/" + quote(document_id, safe="").replace(".", "%2E")
        return self.request_json("DELETE", path, params=params)

    def delete_collection(self, name: str) -> dict[str, Any]:
        return self.request_json("DELETE", f"/v1/collections/{name}")

    def ready(self) -> dict[str, Any]:
        return self.request_json("GET", "/readyz")
