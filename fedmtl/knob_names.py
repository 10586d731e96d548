"""Names the config accepts for the Flower-side knobs (kept Flower-free so the
config can be checked without importing Flower)."""

STRATEGIES = ("fedavg", "fedprox", "fedavgm", "fedadagrad", "fedadam", "fedyogi", "fedmedian", "fedtrimmedavg")
NOT_A_MEAN = ("fedmedian", "fedtrimmedavg")  # they aggregate whole arrays, not a weighted mean
PRIVACY = ("none", "central_dp", "client_clip_dp", "local_dp", "secagg", "secagg_dp")
DP_MODES = ("central_dp", "client_clip_dp", "local_dp", "secagg_dp")  # accounted with an RDP accountant
SECAGG_MODES = ("secagg", "secagg_dp")  # SecAgg+ on Flower's legacy workflow (federation/secagg_round.py)
# each client clips what it sends itself: DP rows (exchange=sparse, dp_rows.py) and the DP item Gram (click_mix)
CLIENT_DP_MODES = ("client_clip_dp", "secagg_dp")
BACKENDS = ("inprocess", "ray", "cohort")
# The server step size of the strategies that have one (FedOpt family, FedAvgM): the rate
# `server_lr.schedule` moves from round to round.
SERVER_RATE = {"fedadam": "eta", "fedyogi": "eta", "fedadagrad": "eta", "fedavgm": "server_learning_rate"}
SERVER_LR_SCHEDULES = ("constant", "cosine")
