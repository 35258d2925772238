"""The zip format: the writer, its worker processes, packing, compression, read-back and fingerprints."""
