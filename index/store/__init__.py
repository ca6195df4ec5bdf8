"""A published generation on disk: dense (FAISS) and lexical (BM25) indexes, the document store, filters."""
