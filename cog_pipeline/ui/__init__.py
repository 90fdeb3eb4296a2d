"""UI: the command line, status and the embedded demo."""
