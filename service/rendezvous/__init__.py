"""Rendezvous: a WebRTC signaling service."""

__version__ = "0.1.0"
