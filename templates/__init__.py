"""Template schema, naming rules and the built-in catalog (pure logic, no I/O but file reads)."""
