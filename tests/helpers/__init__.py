"""Test helpers: fault injection (a TCP proxy that can be cut) and servers started for one test."""
