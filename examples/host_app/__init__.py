"""An example host application that embeds agent_session_store (see README.md in this directory)."""
