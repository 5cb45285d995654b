"""One file per wizard page; each edits one slice of the RunConfig."""
