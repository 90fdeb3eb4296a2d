"""Control: a tick, its claims and recovery, run directories, the driver of a run."""
