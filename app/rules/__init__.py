"""Business rules on the serving path: filter expressions over item fields, re-ranking, placements."""
