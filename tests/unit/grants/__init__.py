"""Unit tests of proxy/grants."""
