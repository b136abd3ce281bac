"""The report: one schema, one writer per format behind one interface, one reader."""
