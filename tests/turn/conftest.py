"""A real coturn for the TURN tests (tests/support/coturn.py documents the fixture)."""

from tests.support.coturn import coturn  # noqa: F401
