"""Unit tests of proxy/workers."""
