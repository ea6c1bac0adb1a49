"""Jobs: batch scoring of tables and files (and, later, streams)."""
