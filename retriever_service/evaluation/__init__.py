"""Measure retrieval quality on BEIR datasets; ``python -m retriever_service.evaluate`` runs it.

One job per module: ``metrics`` scores rankings, ``dataset`` reads BEIR folders and splits their
queries, ``runner`` ingests and searches over HTTP, ``report`` renders for the terminal.
"""
