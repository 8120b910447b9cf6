"""pytest plugin entry point (filled in with the suite)."""
