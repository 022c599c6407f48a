"""API keys: creation (shown once), hashed storage, constant-time verification with a short memory."""
