"""Real servers started on loopback for the test suite."""
