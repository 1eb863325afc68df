"""The studio's people: admin accounts with roles, their dashboard sessions and personal API tokens,
and the audit log of what they did. It imports no other domain package."""
