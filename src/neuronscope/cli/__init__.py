"""The command line: parsing only. Commands are built from the workflow registry (:mod:`.build`)."""
