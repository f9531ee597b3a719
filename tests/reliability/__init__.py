"""Reliability and security tests of the golden store and runner (issue 7)."""
