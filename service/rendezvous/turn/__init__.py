"""ICE servers for `/webrtc/config`: where TURN credentials come from."""
