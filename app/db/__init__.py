"""The relational store: tables, engine and session factories."""
