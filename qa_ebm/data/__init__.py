"""The data stage: sources -> clean text -> sentences -> hierarchical token ids -> grouped splits."""
