"""smtpmail-bridge: Emacs smtpmail's semantics in a non-blocking Python backend."""

__version__ = "0.1.0"
