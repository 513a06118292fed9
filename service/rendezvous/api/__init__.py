"""HTTP and WebSocket routes; each module owns one endpoint family."""
