"""coursepipe: glue (settings, CLI, runtime wiring) around the domain packages."""
