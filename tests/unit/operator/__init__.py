"""Unit tests of the operator\x27s pure logic and node-side I/O."""
