"""The type of a validated config: what `config.validate` returns, as TypedDicts.

A run's config stays a plain, JSON-safe dict at run time (it is written to config.json and
sent to deployed clients as JSON); these classes give it static types, so that
`cfg["train"]["lr"]` is a float to a type checker and a misspelt key is an error there. They
hold no defaults: conf/ holds those, and checks.BEFORE_KEY the values of configs written
before a key existed. `tests/test_config_types.py` holds the types to conf/: every key of
every group option's composed config is declared here with its value's type, and every
`Required` key is in every composition.

Group options add their own keys (a strategy's hyper-parameters, a privacy mode's knobs, a
data set's layout): those are declared `NotRequired` in the group's class.
"""


from typing import Any, Literal, NotRequired, Required, TypedDict

Number = float  # int or float (a config value such as `lr: 1` is an int)


class DatasetConfig(TypedDict, total=False):
    name: Required[str]
    path: str | None
    # synthetic, synthetic_funnel (data/synthetic.py)
    n_users: int
    n_items: int
    dim: int
    mean_interactions: int
    n_genres: int
    popularity_skew: Number
    affinity_strength: Number
    rating_noise: Number
    seed: int
    click_rate: Number
    cart_rate: Number
    purchase_rate: Number
    step_noise: Number
    # interaction logs (data/log_reader.py's spec, data/log_layouts.py's presets)
    layout: str | None
    offers: list[str]
    file: str | list[str] | None
    root: str | None
    format: str | None
    sep: str | None
    header: bool | None
    names: list[str] | None
    quoting: int | None
    nrows: int | None
    columns: dict[str, str | None]
    labels: dict[str, Any]
    join: list[dict[str, Any]] | None
    user_features: dict[str, Any] | None
    item_features: dict[str, Any] | None


class ModelConfig(TypedDict):
    name: Literal["shared_bottom", "mmoe", "ple"]
    dim: int
    hidden: int
    layers: int
    dropout: Number
    init_std: Number
    history: bool
    num_experts: NotRequired[int]
    num_levels: NotRequired[int]


class WeightingConfig(TypedDict):
    name: Literal["fixed", "uncertainty", "dwa", "gradnorm", "pcgrad"]
    weights: NotRequired[dict[str, Number]]
    alpha: NotRequired[Number]
    init_log_var: NotRequired[Number]
    temperature: NotRequired[Number]
    seed: NotRequired[int]


class StrategyConfig(TypedDict):
    name: str
    eta: NotRequired[Number]
    tau: NotRequired[Number]
    beta: NotRequired[Number]
    beta_1: NotRequired[Number]
    beta_2: NotRequired[Number]
    proximal_mu: NotRequired[Number]
    server_learning_rate: NotRequired[Number]
    server_momentum: NotRequired[Number]


class PrivacyConfig(TypedDict):
    name: Literal["none", "central_dp", "client_clip_dp", "local_dp", "secagg", "secagg_dp"]
    clipping: NotRequired[Literal["fixed", "adaptive"]]
    clipping_norm: NotRequired[Number]
    noise_multiplier: NotRequired[Number | None]
    target_epsilon: NotRequired[Number | None]
    delta: NotRequired[Number]
    epsilon: NotRequired[Number]
    sensitivity: NotRequired[Number | None]
    clip_norm_lr: NotRequired[Number]
    target_clipped_quantile: NotRequired[Number]
    clipped_count_stddev: NotRequired[Number | None]
    clipping_range: NotRequired[Number]
    quantization_range: NotRequired[int]
    num_shares: NotRequired[int | Number]
    reconstruction_threshold: NotRequired[int | Number]
    max_weight: NotRequired[Number | None]
    max_rows: NotRequired[int]
    count_share: NotRequired[Number]
    row_scale: NotRequired[Number]
    adam_noise_correction: NotRequired[Number | None]
    min_row_count: NotRequired[Number | None]


class BackendConfig(TypedDict):
    name: Literal["cohort", "inprocess", "ray"]
    threads: NotRequired[int]
    workers: NotRequired[int]
    chunk_mb: NotRequired[Number]
    state: NotRequired[Literal["auto", "memory", "disk"]]
    disk_from_clients: NotRequired[int]
    num_cpus_per_client: NotRequired[Number]
    num_gpus_per_client: NotRequired[Number]
    address: NotRequired[str | None]


class ExchangeConfig(TypedDict):
    name: Literal["dense", "sparse"]
    pad_rows: NotRequired[int]
    dtype: NotRequired[Literal["float32", "float16", "int8"]]


class SplitConfig(TypedDict):
    name: Literal["per_user", "leave_one_out", "last_basket"]
    seed: int  # null in conf/: validate puts the run's seed there
    path: str | None
    validation: bool
    train_frac: NotRequired[Number]
    validation_seed: NotRequired[int]


class RankingConfig(TypedDict):
    k: int
    exclude_seen: bool
    recall: bool | None
    repeat_weight: Number
    repeat_decay: Number


class FedRepConfig(TypedDict):
    head_epochs: int


class ServerLrConfig(TypedDict):
    schedule: Literal["constant", "cosine"]
    final: Number


class TrainSection(TypedDict):
    batch_size: int
    lr: Number
    l2: Number
    weight_decay: Number
    personal_decay: Number
    click_loss: Literal["softmax", "sampled_softmax", "sampled"]
    num_negatives: int
    optimizer: Literal["adam", "sgd"]
    shared_lr: Number | None


class EvalConfig(TypedDict):
    negatives: int


class ClickMixConfig(TypedDict):
    weight: Number
    lam: Number
    grid_weight: list[Number]
    grid_lam: list[Number]
    dp_clip: Number
    dp_noise_multiplier: Number
    secure_gram_mb: Number
    seq_weight: Number
    seq_window: int
    seq_last: int
    seq_decay: Number


class ClientFloorConfig(TypedDict):
    privacy: str
    gram: bool
    sparse: bool
    min_noise_multiplier: Number
    secagg_min_threshold: int


InitConfig = TypedDict("InitConfig", {"from": str | None, "freeze_encoder": bool})


class TransferConfig(TypedDict):
    new_users: Number
    new_items: Number
    k: list[int]
    epochs: int
    tune: Literal["user", "personal"]
    seed: int | None


class FaultsConfig(TypedDict):
    drop_rate: Number
    straggler_rate: Number
    straggler_delay: Number | None
    seed: int | None


class RobustConfig(TypedDict):
    max_abs_update: Number
    max_weight: Number | None
    max_update_norm: Number | None
    on_large_update: Literal["reject", "clip"]


class RunConfig(TypedDict):
    """A validated run config (conf/config.yaml, its groups and the command's overrides)."""

    mode: Literal["federated", "centralized", "local"]
    tasks: list[str]
    dataset: DatasetConfig
    model: ModelConfig
    weighting: WeightingConfig
    strategy: StrategyConfig
    privacy: PrivacyConfig
    backend: BackendConfig
    exchange: ExchangeConfig
    split: SplitConfig
    ranking: RankingConfig
    aggregate: Literal["encoder", "all", "fedrep"]
    fedrep: FedRepConfig
    num_clients: int
    num_rounds: int
    fraction_train: Number
    fraction_evaluate: Number
    min_train_clients: int
    min_evaluate_clients: int
    local_epochs: int
    server_lr: ServerLrConfig
    server_decay: Number
    average_last: int
    baseline_epochs: int | None
    eval_every: int
    train: TrainSection
    eval: EvalConfig
    click_mix: ClickMixConfig
    client_floor: ClientFloorConfig
    seed: int
    device: Literal["auto", "cpu", "cuda"]
    round_timeout: Number | None
    on_client_failure: Literal["continue", "stop"]
    verbose: bool
    save_model: bool
    init: InitConfig
    transfer: TransferConfig
    faults: FaultsConfig
    robust: RobustConfig
    checkpoint_every: int
    resume: bool | str
    output_dir: NotRequired[str]  # set by simulate.run for the apps
