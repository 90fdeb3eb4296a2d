"""Tests on a real HTCondor personal pool (tests/pool/condor.py starts one from the prebuilt tarball)."""
