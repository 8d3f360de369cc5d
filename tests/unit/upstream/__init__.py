"""Unit tests of proxy/upstream."""
