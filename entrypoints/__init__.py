"""Composition roots: the `gongpei` CLI, the embedded platform's supervisor, the local SMS gateway.

Everything else is wired from here; nothing below imports this package."""
