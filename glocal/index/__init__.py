"""Indexing: visual-word codebooks, ASMK / ASMK* / R-ASMK aggregation and (persistent) inverted files.

Modules: ``codebook`` (the codebook record, exact assignment), ``quantizer`` (fast two-level assignment),
``kmeans`` (codebook training; imports run ``codebook`` <- ``quantizer`` <- ``kmeans``), ``asmk``
(aggregation, kernel, in-memory index), ``regional`` (Detect-to-Retrieve regions), ``kernel`` (vectorised
scoring), ``inverted_file`` (persistent index; ``postings`` its array work, ``layout``, ``manifest``,
``segment_file`` its parts), ``merge`` (compaction), ``stats`` (size accounting), ``blas`` (BLAS threads).
Global descriptors: ``global_index`` (``ivfpq`` its faiss back end), ``query_expansion`` (alpha-QE / DBA).
"""
