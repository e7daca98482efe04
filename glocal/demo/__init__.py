"""The embedded default job: a synthetic landmark benchmark from scikit-image photos."""
