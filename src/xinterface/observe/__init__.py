"""What the VMM tells about a guest: Python logging set up for the command line
(:mod:`.logs`) and metrics as JSON lines (:mod:`.metrics`)."""
