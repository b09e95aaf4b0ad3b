"""Money in a stream: wallets on a double-entry ledger, gifts, tips, purchases (built in later issues)."""
