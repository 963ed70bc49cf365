"""The read path: the node, its ladder of sources, the reader, the block store and origins."""
