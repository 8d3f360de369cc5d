"""Unit tests of proxy/session."""
