"""Unit tests of proxy/net."""
