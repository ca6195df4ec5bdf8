"""Tests of the index package (FAISS, docstore, indexing job); no torch needed."""
