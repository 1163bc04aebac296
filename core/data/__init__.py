"""Data: manifest builders per source, robust decoding, the pre-processing cache, splits and the demo phantom."""
