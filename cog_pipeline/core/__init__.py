"""Core: exceptions, key and file names, the crash hook, logging, process identity, the one config model."""
