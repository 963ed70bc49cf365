"""The host: one cache per host. The local API on a Unix socket (server and client), the
reader backend that short-circuits hot reads to the block files, metrics and a status page."""
