"""Sans-I/O protocol cores: bytes in, events out, replies rendered to
bytes. Nothing here touches sockets, asyncio, clocks or logging."""
