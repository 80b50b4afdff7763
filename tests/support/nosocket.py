"""A stand-in for the socket under a fake transport: picows asks for its fileno."""

from __future__ import annotations


class NoSocket:
    @staticmethod
    def fileno() -> int:
        return -1
