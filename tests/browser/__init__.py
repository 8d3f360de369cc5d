"""Tests that drive the web console in a real headless Chromium (tests/fixtures/browser.py)."""
