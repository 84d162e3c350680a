"""The offline-KSK key ceremony (issue 17)."""
