"""The parts of ``SessionRepository``: see ``base`` for the map."""
