"""The pure core: no sockets, no clocks, no asyncio; time comes in as an argument."""
