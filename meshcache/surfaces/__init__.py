"""Surfaces: the S3-compatible gateway and the FUSE mount, over the node."""
