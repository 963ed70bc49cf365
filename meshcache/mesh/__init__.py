"""The zone: membership shell, the peer service, discovery, summaries, auth and rate limits."""
