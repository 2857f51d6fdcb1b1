"""asyncio listeners and sessions that drive the protocol cores."""
