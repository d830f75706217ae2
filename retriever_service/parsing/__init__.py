"""Turn files into documents: text with page and section spans, or a clear reason it cannot be.

``formats`` picks a parser by file type; ``pdf``, ``docx``, ``html`` and ``text`` each read one
kind; ``sandbox`` runs the parsers of untrusted binary formats in a child process with a time
and memory limit, so that a hostile file costs one killed worker, not the service.
"""
