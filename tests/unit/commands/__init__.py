"""Unit tests of proxy/commands."""
