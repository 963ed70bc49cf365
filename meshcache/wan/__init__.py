"""Across zones: the Kademlia DHT of provider records and the remote-zone rung's parts."""
