"""The rungs of the read path, one module each (see read/ladder.py for the interface)."""
