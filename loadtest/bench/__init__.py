"""`python -m loadtest.bench`: Rendezvous against the PeerJS server, side by side.

Relay (saturation and fixed load), memory per idle connection, and join latency; see
loadtest/README.md ("Rendezvous against PeerJS").
"""
