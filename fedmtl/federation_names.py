"""Names the config accepts for the Flower-side knobs (kept Flower-free so the
config can be checked without importing Flower)."""

STRATEGIES = ("fedavg",)
PRIVACY = ("none",)
BACKENDS = ("inprocess", "ray")
