"""Heads that sit between the backbone and the predictions: the pixel decoder plus transformer decoder, and the
optional crop classifier of the thing classes."""
