"""Keys the retriever keeps in each chunk's metadata; user metadata may not start with "_"."""

DOCUMENT_ID = "_document_id"
POSITION = "_position"
CHUNK_COUNT = "_chunk_count"
CONTENT_HASH = "_content_hash"
START = "_start"
END = "_end"
RESERVED_PREFIX = "_"
INGESTED_AT = "_ingested_at"
# The document version a chunk belongs to (also in its id), and when the chunk was written.
VERSION = "_version"
WRITTEN_AT = "_written_at"
