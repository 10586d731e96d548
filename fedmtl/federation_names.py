"""Names the config accepts for the Flower-side knobs (kept Flower-free so the
config can be checked without importing Flower)."""

STRATEGIES = ("fedavg", "fedprox", "fedavgm", "fedadagrad", "fedadam", "fedyogi", "fedmedian", "fedtrimmedavg")
PRIVACY = ("none",)
BACKENDS = ("inprocess", "ray")
