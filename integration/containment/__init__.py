"""Attack tests: what a hostile container or local peer tries, and what must hold."""
