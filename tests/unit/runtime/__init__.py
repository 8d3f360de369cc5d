"""Unit tests of proxy/runtime."""
