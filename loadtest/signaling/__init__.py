"""The locust suite's parts (loadtest/locustfile.py drives them): options, browser-like
SDP and ICE candidates, delivery checks, and the calls that run over WebSockets."""
