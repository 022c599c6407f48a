"""Business rules applied to candidate lists: re-ranking (boosts, promotions, diversity, MMR, pins, rotation)."""
