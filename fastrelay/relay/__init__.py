"""The relay: a WebSocket rendezvous that joins client_a streams to agents."""
