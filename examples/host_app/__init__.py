"""An example host application that embeds agent_sessions (see README.md in this directory)."""
