"""Ray Data callable classes that place fastslow's model code on actor pools. Filled in by the indexing issue."""
