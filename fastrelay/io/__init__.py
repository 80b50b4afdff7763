"""The only code that touches picows, uvloop and sockets."""
