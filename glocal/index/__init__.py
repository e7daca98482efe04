"""Indexing: visual-word codebooks, ASMK / ASMK* / R-ASMK aggregation and (persistent) inverted files.

Modules: ``codebook`` (k-means, exact assignment), ``quantizer`` (fast two-level assignment), ``asmk``
(aggregation, kernel, in-memory index), ``regional`` (Detect-to-Retrieve regions), ``kernel`` (vectorised
scoring), ``inverted_file`` (persistent index; ``layout``, ``manifest``, ``segment_file`` its parts), ``merge``
(compaction), ``stats`` (size accounting), ``blas`` (BLAS threads). Global descriptors: ``global_index``.
"""
