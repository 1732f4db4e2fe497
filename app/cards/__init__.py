"""Character cards: reading every format users have, normalising to V3, writing back faithfully."""
