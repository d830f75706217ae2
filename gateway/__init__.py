"""Gateway: the one service users talk to; answers questions from retrieved snippets."""
