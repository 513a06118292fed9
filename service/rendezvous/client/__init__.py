"""`rendezvous client`: a terminal test client that joins a room, prints every frame it
receives, sends pings and offers, and exits with a status that names a refused join."""
