"""Retriever service: chunks, embeds and stores documents, and finds the chunks for a query."""
