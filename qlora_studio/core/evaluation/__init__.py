"""Base against tuned: loading both, generating, scoring held-out rows, chat sessions."""
