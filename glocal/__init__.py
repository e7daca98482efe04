"""glocal: landmark and instance-level image retrieval with global and local features."""
__version__ = "0.1.0"
