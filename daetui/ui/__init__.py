"""The console: a Textual app that knows the control plane only through the control socket's commands."""
