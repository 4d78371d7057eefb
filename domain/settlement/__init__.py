"""Co-delivery settlement: tariffs, trip cost allocation, a double-entry ledger in integer fen."""
