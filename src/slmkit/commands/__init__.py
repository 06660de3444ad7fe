"""CLI verbs, one module each. Every module exposes `register(subparsers)`."""
