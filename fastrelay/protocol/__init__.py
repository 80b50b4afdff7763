"""fastrelay's wire protocol as pure code: no sockets, no asyncio, no clock reads."""
