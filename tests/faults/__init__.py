"""Fault tests: each cuts or hangs a private proxy (or kills a process it started), shows the fault was seen,
then checks what survived it. Never the shared servers."""
