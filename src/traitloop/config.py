"""Every knob of an experiment, as pydantic models: YAML in, validated, dumped back into the run dir.

Each field carries its default and a description (shown by `traitloop config-docs` and in
docs/CONFIG.md). Unknown keys are errors, so a typo never silently falls back to a default.
Defaults follow ../shared/PROTOCOL.md where that is sensible on a CPU; where they differ for speed
(eval samples, token limits) the description says so.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from traitloop.errors import UserError
from traitloop.openai_client import secret_params
from traitloop.precision import MatmulPrecision
from traitloop.settings import SETTINGS

DIRECTORY_NAME = re.compile(r"[A-Za-z0-9._-]+")


def directory_name(value: str) -> str:
    """A name that becomes a directory under out_dir (a run's, a sweep's): one plain path component, so
    it can never point elsewhere (no '/', not absolute, not empty, '.' or '..'). A pydantic validator."""
    if not DIRECTORY_NAME.fullmatch(value) or value in (".", ".."):
        raise PydanticCustomError(
            "directory_name",
            "it names a directory under out_dir, so give one plain name: letters, digits, '.', '_' and '-', not empty, '.' or '..'",
        )
    return value


def no_credentials(url: str | None, key: str, instead: str) -> str | None:
    """A server URL without credentials: no user info (https://user:KEY@host/v1) and no query parameter
    whose name looks secret (https://host/v1?api_key=KEY, openai_client.is_secret_param). config.yaml is
    written to disk with every run, and traitloop keeps keys only in environment variables. `instead` says
    where the key goes. The message names the parameter, never its value."""
    from urllib.parse import urlsplit

    if url and "@" in url and urlsplit(url).username is not None:
        raise ValueError(
            f"{key}: the URL holds credentials (user info before its '@'), and the run's config.yaml would store them on "
            f"disk; remove them from the URL and {instead}"
        )
    names = [f"'{name}'" for name, _ in secret_params(url or "")]
    if names:
        params = f"query parameter{'s' if len(names) > 1 else ''} {', '.join(names)}"
        raise ValueError(
            f"{key}: the URL holds credentials (its {params}), and the run's config.yaml would store them on disk; "
            f"remove them from the URL and {instead}"
        )
    return url


class _Section(BaseModel):
    # coerce_numbers_to_str: `name: 2024` or `--set name=2024` is a name, not an error
    model_config = ConfigDict(extra="forbid", validate_assignment=True, coerce_numbers_to_str=True)


class ModelConfig(_Section):
    ref: str = Field(
        "embedded:smollm2-135m-instruct",
        description="Model to seed and train: a Hugging Face id, a local directory with safetensors, "
        "or an embedded model (`traitloop models list`).",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Weights dtype for training and sampling.")
    matmul_precision: MatmulPrecision = Field(
        "highest",
        description="torch.set_float32_matmul_precision for the whole run (training, coherence, fp32 sampling). "
        "highest: exact fp32. medium: fp32 matmuls take bf16-rounded inputs with fp32 accumulation where the "
        "hardware has a fast path (CPUs with AMX / AVX512-BF16; TF32 on NVIDIA GPUs), everything else stays fp32: "
        "faster training and coherence scoring at nearly the same losses, but a higher peak memory (measured in BENCHMARKS.md).",
    )
    trust_remote_code: bool = Field(False, description="Allow model code from the hub. Off unless you trust the repository.")
    allow_chat_model_for_sdf: bool = Field(
        False,
        description="SDF is continued pretraining of a BASE model; a chat-tuned model is refused unless this is true.",
    )


class SamplingConfig(_Section):
    """How the previous generation writes the next generation's training data."""

    temperature: float = Field(0.8, gt=0, description="Sampling temperature (PROTOCOL: 0.8).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    max_new_tokens: int = Field(256, ge=1, description="Longest answer, in tokens.")
    batch_size: int = Field(
        64, ge=1, description="Prompts per generate() call (length-sorted; larger batches sample faster on a CPU, BENCHMARKS.md)."
    )


class GenerationConfig(_Section):
    """Which engine samples training data and eval answers."""

    backend: Literal["hf", "vllm"] = Field(
        "hf",
        description="hf: transformers generate() in this process; vllm: a running vLLM OpenAI-compatible server "
        "with LoRA enabled (each cycle's adapter is loaded into it at run time; for GPUs).",
    )
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        description="hf: dtype of the sampling copy of each model (its adapter merged in fp32 first). auto = bfloat16 "
        "where the hardware computes it natively (CPUs with AMX / AVX512-BF16, bf16 GPUs; faster sampling "
        "with trait scores unchanged within noise, BENCHMARKS.md), else float32. Training and coherence stay in model.dtype.",
    )
    vllm_url: str | None = Field(None, description="vllm: the server's base URL, e.g. http://127.0.0.1:8000/v1.")
    concurrency: int = Field(
        256,
        ge=1,
        description="vllm: requests kept in flight at once. A GPU server batches hundreds (vLLM's --max-num-seqs, 256 by "
        "default on a GPU); requests beyond its batch wait in its queue. Lower it for a small CPU server.",
    )

    @model_validator(mode="after")
    def _needs_url(self) -> GenerationConfig:
        if self.backend == "vllm" and not self.vllm_url:
            raise ValueError("generation.backend=vllm needs generation.vllm_url (the server's /v1 URL)")
        no_credentials(
            self.vllm_url, "generation.vllm_url", "serve vLLM without --api-key on an address only you reach (traitloop sends it no key)"
        )
        return self


class LoraConfig(_Section):
    r: int = Field(16, ge=1, description="LoRA rank (PROTOCOL: 16).")
    alpha: int = Field(32, ge=1, description="LoRA alpha.")
    dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout.")
    target_modules: str | list[str] = Field("all-linear", description="Modules that get adapters; 'all-linear' = every linear layer.")


class TrainConfig(_Section):
    """One cycle's LoRA training (TRL SFTTrainer for SFT and SDF, DPOTrainer for DPO). Defaults shown are
    SFT's; setting: sdf uses batch_size 4 and weight_decay 0.1, setting: dpo uses learning_rate 1e-5,
    lr_scheduler cosine (to 0 within each cycle), warmup_ratio 0 and batch_size 4 (PROTOCOL), unless set."""

    learning_rate: float = Field(1.5e-4, gt=0, description="Peak learning rate (PROTOCOL: 1.5e-4).")
    lr_scheduler: str = Field("constant_with_warmup", description="transformers scheduler name (PROTOCOL: constant after warmup).")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Fraction of steps spent warming up.")
    batch_size: int = Field(2, ge=1, description="Examples per optimizer step (PROTOCOL SFT: 2).")
    grad_accum: int = Field(1, ge=1, description="Gradient accumulation steps.")
    epochs: float = Field(1.0, gt=0, description="Passes over the cycle's data (PROTOCOL: 1).")
    adam_beta1: float = Field(0.9, description="Adam beta1.")
    adam_beta2: float = Field(0.95, description="Adam beta2 (PROTOCOL: 0.95).")
    adam_eps: float = Field(1e-8, description="Adam epsilon.")
    weight_decay: float = Field(0.0, ge=0, description="Weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping.")
    max_length: int = Field(512, ge=16, description="Longest training sequence in tokens; longer ones are cut.")
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations to save memory (slower); for large models on small GPUs."
    )


class DataConfig(_Section):
    """What each later cycle trains on (PROTOCOL default: only the newest generated data, unfiltered)."""

    policy: Literal["replace", "accumulate"] = Field(
        "replace",
        description="replace: cycle k trains only on what cycle k-1 generated; accumulate: on everything generated in cycles 1..k so far.",
    )
    mix_seed: int = Field(
        0, ge=0, description="Add this many seed examples (drawn from the first n_seed, fresh each cycle) to every later cycle."
    )
    min_coherence: float | None = Field(
        None,
        description="Typicality filter: drop generated examples whose log-likelihood under the base model (nats/token) "
        "is below this, e.g. -3.0 (None = keep all). It removes trait-bearing text first (persona text is less likely "
        "under the base; docs/JUDGES.md): prefer min_coherence_score. Kept/dropped counts are reported per cycle.",
    )
    min_coherence_score: float | None = Field(
        None,
        ge=0,
        le=100,
        description="Coherence filter: drop generated examples whose coherence score (0-100: complete, not repetitive, "
        "on topic, fluent; judges/coherence_score.py, validated in docs/JUDGES.md) is below this, e.g. 50 (None = keep all).",
    )
    prompt_pool: str | None = Field(
        None,
        description="Your own prompts for later cycles of a chat setting (sft, dpo): a JSONL file with one "
        '{"question": "..."} per line, in place of the built-in advice pool (None = built in). It must hold '
        "cycles x n_sampled distinct prompts, none of them an eval question.",
    )
    opener_pool: str | None = Field(
        None,
        description="Your own document openers for later cycles of the sdf setting: a JSONL file with one "
        '{"opener": "..."} per line, in place of the built-in openers (None = built in).',
    )


class DpoConfig(_Section):
    """DPO only (TRL DPOTrainer). chosen = the previous generation's answer, rejected = the base model's."""

    beta: float = Field(0.1, gt=0, description="DPO beta (PROTOCOL: 0.1; 0.01-0.2 explored).")
    loss_type: str = Field("sigmoid", description="TRL loss_type (PROTOCOL: sigmoid, the original DPO loss).")


class EvalConfig(_Section):
    """Each cycle's model answers the trait's everyday eval questions; answers are then judged."""

    samples_per_question: int = Field(10, ge=1, description="Answers per question (PROTOCOL: 10-20; fewer is faster on CPU).")
    questions: int | None = Field(None, ge=1, description="Use only the first N of the trait's 12 eval questions (None = all).")
    temperature: float = Field(0.7, gt=0, description="Sampling temperature (PROTOCOL: 0.7).")
    max_new_tokens: int = Field(256, ge=1, description="Longest answer (PROTOCOL: 400).")
    batch_size: int = Field(64, ge=1, description="Prompts per generate() call (length-sorted).")
    include_base: bool = Field(True, description="Also evaluate the untrained base model once, as the reference line of every figure.")


class JudgeConfig(_Section):
    """Who scores the eval answers. The probe is the offline default; api and local are LLM judges
    that follow PROTOCOL.md: one output token, top-20 logprobs, probability-weighted 0-100."""

    kind: Literal["probe", "api", "local"] = Field(
        "probe",
        description="'probe' = offline embedding probe trained on the trait's probe.jsonl (a classifier, not "
        "an LLM judge; its held-out accuracy is reported with every run); 'api' = an OpenAI-compatible "
        "endpoint; 'local' = a transformers model loaded here.",
    )
    model: str | None = Field(None, description="api: the endpoint's model name; local: a model reference (hub id, dir, embedded:...).")
    base_url: str | None = Field(None, description="api: endpoint base URL, e.g. http://127.0.0.1:8000/v1 (default $OPENAI_BASE_URL).")
    api_key_env: str | None = Field(
        "OPENAI_API_KEY",
        description="api: NAME of the environment variable holding the key (the key itself is never stored); a run "
        "refuses to start while it is unset or empty. null: send no key (a local server that needs none, e.g. vLLM).",
    )
    concurrency: int = Field(8, ge=1, description="api: requests in flight at once.")
    timeout_s: float = Field(60.0, gt=0, description="api: seconds before a request counts as timed out.")
    max_attempts: int = Field(6, ge=1, description="api: attempts per request (retries back off exponentially, with jitter).")
    backoff_s: float = Field(1.0, gt=0, description="api: first retry delay; doubles each attempt; a Retry-After header wins.")
    coherence: bool = Field(True, description="api/local: also score coherence with the coherence rubric (beside the log-likelihood).")
    min_number_mass: float = Field(
        0.25, ge=0, le=1, description="No score when the probability on number tokens is below this (PROTOCOL: 0.25)."
    )
    price_per_million_input: float = Field(0.0, ge=0, description="api: price per 1M prompt tokens, for the cost estimate.")
    price_per_million_output: float = Field(0.0, ge=0, description="api: price per 1M completion tokens.")
    batch_size: int = Field(8, ge=1, description="local: answers scored per forward pass.")

    @model_validator(mode="after")
    def _needs_model(self) -> JudgeConfig:
        if self.kind in ("api", "local") and not self.model:
            raise ValueError(f"judge.kind={self.kind} needs judge.model")
        no_credentials(
            self.base_url, "judge.base_url", "put the key in the environment variable judge.api_key_env names (OPENAI_API_KEY by default)"
        )
        return self

    def identity(self) -> str:
        """Short stable name of this judge, used for file names and score columns."""
        if self.kind == "probe":
            return "probe"
        safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in str(self.model))
        return f"{self.kind}-{safe}"


class TrackingConfig(_Section):
    """Experiment tracking (traitloop.tracking): the config, every cycle's metrics and TRL's training curves go to
    trackio, Weights & Biases or MLflow, one tracking run per `traitloop run` process. Never changes results
    (not part of the science hash), and never stops a run: an unreachable tracker or a missing library is one
    warning, and the run goes on untracked. Install the libraries with `pip install traitloop[tracking]`."""

    backend: Literal["none", "trackio", "wandb", "mlflow"] = Field(
        "none",
        description="none: no tracking; trackio: a local trackio project (TRACKIO_DIR, or a Space via TRACKIO_SPACE_ID); "
        "wandb: Weights & Biases (WANDB_MODE=offline works without an account); mlflow: an MLflow tracking server or store.",
    )
    project: str = Field("traitloop", description="trackio / wandb project, MLflow experiment name.")
    run_name: str | None = Field(None, description="Name of the tracking run (None = the run's name).")
    group: str | None = Field(
        None,
        description="Group of the tracking run (wandb / trackio group, MLflow tag traitloop.group). None = the "
        "condition: setting, trait and a short hash of the config without its seed, so a condition's replications group together.",
    )
    training_curves: bool = Field(
        True, description="Also send TRL's per-step training logs (loss, learning rate, grad norm) through transformers' report_to."
    )
    tracking_uri: str | None = Field(
        None,
        description="mlflow: the tracking URI (http://host:5000, sqlite:///mlflow.db, a directory; None = MLFLOW_TRACKING_URI "
        "or MLflow's default).",
    )

    @model_validator(mode="after")
    def _no_credentials(self) -> TrackingConfig:
        no_credentials(
            self.tracking_uri,
            "tracking.tracking_uri",
            "give MLflow its credentials through MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD",
        )
        return self


class ExperimentConfig(_Section):
    """One iterated self-training run."""

    name: str = Field("run", description="Run name; the run dir is out_dir/name.")
    out_dir: Path = Field(Path("runs"), description="Parent directory of run directories.")
    setting: str = Field(
        "sft",
        description="sft: chats on an instruct model; sdf: synthetic documents (continued pretraining) on a base "
        "model; dpo: preference pairs (chosen = previous generation, rejected = base model) on an instruct model. "
        "The choices are traitloop.settings.SETTINGS (one file per setting).",
    )
    init: Literal["reset", "continual"] = Field(
        "reset",
        description="reset: every cycle trains a fresh adapter on the original base (DPO reference = the base); "
        "continual: cycle k continues training cycle k-1's adapter (DPO reference = the cycle k-1 model).",
    )
    restart_from_base_at: list[int] = Field(
        default_factory=list,
        description="continual only: cycles that start again from the original base (fresh adapter; DPO reference = base).",
    )
    trait: str = Field("bliss", description="Built-in trait name or path to a trait folder.")
    n_seed: int = Field(100, ge=1, description="Seed examples that train cycle 0.")
    n_sampled: int = Field(50, ge=1, description="Generated examples that train each later cycle.")
    cycles: int = Field(6, ge=0, description="Index of the last cycle: the run trains cycles 0..cycles.")
    seed: int = Field(0, description="Run seed; each cycle and stage derives its own seed from it.")
    cycle0_from: Path | None = Field(
        None,
        description="Reuse cycle 0 (data, adapter, answers, scores) from this finished run directory instead of "
        "training it; that run must have the same config apart from seed. Sweeps set it for share_cycle0.",
    )
    publish_cycle0: bool = Field(
        False,
        description="After training cycle 0, copy it (with the base model's evaluation) into out_dir/cycle0-cache/, "
        "where every later run with the same cycle-0 config, the same seed included, adopts it instead of training "
        "it again: the other init of a seed, say (`traitloop reproduce`'s grids set it). Changes no result.",
    )
    model: ModelConfig = Field(default_factory=ModelConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    dpo: DpoConfig = Field(default_factory=DpoConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @model_validator(mode="before")
    @classmethod
    def _setting_defaults(cls, data: Any) -> Any:
        """Fill in the chosen setting's defaults (PROTOCOL) under whatever the config sets itself."""
        if isinstance(data, dict) and data.get("setting") in SETTINGS:
            return _deep_merge(SETTINGS[data["setting"]].defaults, data)
        return data

    valid_name = field_validator("name")(directory_name)

    @field_validator("setting")
    @classmethod
    def _known_setting(cls, value: str) -> str:
        if value not in SETTINGS:  # worded as pydantic words a Literal
            names = [repr(s) for s in SETTINGS]
            raise PydanticCustomError("setting", "Input should be " + ", ".join(names[:-1]) + f" or {names[-1]}")
        return value

    @model_validator(mode="after")
    def _check(self) -> ExperimentConfig:
        if self.model.trust_remote_code and self.model.ref.startswith("embedded:"):
            raise ValueError("model.trust_remote_code makes no sense for an embedded model")
        if self.restart_from_base_at:
            if self.init != "continual":
                raise ValueError("restart_from_base_at needs init: continual (reset runs start every cycle from the base)")
            bad = [c for c in self.restart_from_base_at if not 1 <= c <= self.cycles]
            if bad:
                raise ValueError(f"restart_from_base_at: cycles {bad} are not in 1..cycles ({self.cycles})")
        return self

    def starts_from_base(self, cycle: int) -> bool:
        """Does cycle `cycle` train a fresh adapter on the original base (rather than continue cycle-1's)?"""
        return self.init == "reset" or cycle == 0 or cycle in self.restart_from_base_at

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name

    def science_dict(self) -> dict[str, Any]:
        """The fields that change results: everything but NOT_SCIENCE (where the run is, how it is served)."""
        return _drop(self.model_dump(mode="json"), NOT_SCIENCE)

    def condition_dict(self) -> dict[str, Any]:
        """The science minus the seed: runs with equal condition dicts are replications (the one
        definition of a condition: sweeps and reports group runs by it)."""
        return _drop(self.science_dict(), NOT_A_CONDITION)

    def science_hash(self) -> str:
        return _hash(self.science_dict())

    def cycle0_dict(self) -> dict[str, Any]:
        """The fields that decide cycle 0 (its data, adapter and eval): runs with equal cycle0 dicts
        train the same cycle 0, whatever they do afterwards."""
        d = self.science_dict()
        for later in ("cycles", "n_sampled", "init", "restart_from_base_at", "data"):
            d.pop(later)
        d["eval"].pop("include_base")
        return d

    def cycle0_config(self) -> ExperimentConfig:
        """This run's cycle 0 as a run of its own, under out_dir/cycle0-cache/: `traitloop calibrate` trains
        cycle-0 models there, and any later run with the same cycle0_dict reuses them."""
        d = self.model_dump(mode="json")
        for later in ("cycles", "n_sampled", "init", "restart_from_base_at", "data", "cycle0_from", "publish_cycle0"):
            d.pop(later)
        d["eval"]["include_base"] = False
        trait = Path(self.trait).name
        d["name"] = f"{self.setting}-{trait}-n{self.n_seed}-s{self.seed}-{_hash(self.cycle0_dict())[:10]}"
        d["out_dir"] = str(Path(self.out_dir) / "cycle0-cache")
        d["cycles"] = 0
        return ExperimentConfig.model_validate(d)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


# Dotted config keys that never change results: where things are, not what they are.
NOT_SCIENCE = ("out_dir", "name", "cycle0_from", "publish_cycle0", "generation.vllm_url", "generation.concurrency", "tracking")
NOT_A_CONDITION = ("seed",)  # and what differs between replications of one condition


def _drop(d: dict[str, Any], dotted: tuple[str, ...]) -> dict[str, Any]:
    """d without the dotted keys (in place; returns d)."""
    for key in dotted:
        *parents, last = key.split(".")
        node = d
        for part in parents:
            node = node.get(part, {})
        node.pop(last, None)
    return d


def _hash(d: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def format_validation_error(
    err: ValidationError,
    source: str,
    what: str = "config",
    unknown_hint: str = "`traitloop config-docs` lists every key",
    known: list[str] | None = None,
    set_keys: set[str] = frozenset(),
) -> str:
    """One line naming every problem by its dotted key: what a person needs to fix a YAML file.

    known: every valid dotted key (an unknown key gets a "did you mean" from its siblings);
    set_keys: keys that came from --set, so the message says where to look."""
    defaults = {key: default for key, default, _ in describe_fields()} if what == "config" else {}
    problems = [_problem(e, unknown_hint, known or [], set_keys, defaults) for e in err.errors()]
    return f"{source}: invalid {what}: " + "; ".join(problems)


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _problem(e: Any, unknown_hint: str, known: list[str], set_keys: set[str], defaults: dict[str, str]) -> str:
    """One pydantic error as a phrase: the key, what is wrong with it, and how to fix it."""
    import difflib

    where = ".".join(str(p) for p in e["loc"])
    via = " (from --set)" if where and any(where == k or where.startswith(k + ".") for k in set_keys) else ""
    kind = e["type"]
    if kind == "extra_forbidden":
        parent, _, leaf = where.rpartition(".")
        siblings = [k.rpartition(".")[2] for k in known if k.rpartition(".")[0] == parent]
        close = difflib.get_close_matches(leaf, siblings, n=1, cutoff=0.75)
        hint = f"did you mean '{(parent + '.' if parent else '') + close[0]}'?" if close else "check the spelling"
        return f"unknown key '{where}'{via}: {hint} ({unknown_hint})"
    if kind == "missing":
        return f"missing required key '{where}': add it"
    if kind in ("value_error", "assertion_error"):  # our own validators: their message names the keys
        return e["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if kind in ("model_type", "dict_type"):
        return f"'{where}'{via} must be a mapping of keys (key: value lines indented below it), not {_short(e.get('input'))}"
    default = f"; default {defaults[where]}" if where in defaults else ""
    return f"{where or '(top level)'}{via}: {e['msg']} (got {_short(e.get('input'))}{default})"


def config_keys() -> list[str]:
    """Every valid dotted key of an experiment config, sections included."""
    leaves = [key for key, _, _ in describe_fields()]
    return sorted({".".join(key.split(".")[: i + 1]) for key in leaves for i in range(key.count(".") + 1)})


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`["train.learning_rate=1e-4", "trait=lucky"]` -> nested dict. Values are parsed as YAML."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise UserError(f"--set {pair!r}: expected key.path=value, for example --set train.learning_rate=1e-4")
        key, raw = pair.split("=", 1)
        if not all(part.strip() for part in key.split(".")):
            raise UserError(
                f"--set {pair!r}: the key before '=' is empty or has an empty part; expected key.path=value, "
                "for example --set train.learning_rate=1e-4"
            )
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise UserError(f"--set {pair!r}: '{p}' is also set as a value; set '{p}' or its keys ({p}.KEY=...), not both")
        node[parts[-1]] = value
    return out


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(merged.get(k), dict):
            merged[k] = _deep_merge(merged[k], v)
        else:
            merged[k] = v
    return merged


def build_config(data: dict[str, Any], overrides: list[str] | None = None, source: str = "config") -> ExperimentConfig:
    data = _deep_merge(data, parse_overrides(overrides or []))
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as err:
        set_keys = {pair.split("=", 1)[0].strip() for pair in overrides or []}
        raise UserError(format_validation_error(err, source, known=config_keys(), set_keys=set_keys)) from None


def read_yaml_mapping(path: str | Path, what: str = "config file", expected: str = "config keys") -> dict[str, Any]:
    """A YAML file whose top level is a mapping; UserError (with the line of a syntax error) otherwise."""
    path = Path(path)
    if not path.is_file():
        if path.is_dir():
            raise UserError(f"{what} {path} is a directory, not a file; name the YAML file itself")
        raise UserError(f"{what} not found: {path}; check the path (a relative path starts in the current directory)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise UserError(f"{path}: {yaml_error_text(err)}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a UTF-8 text file; give the {what} as YAML text") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of {expected} (key: value lines) at the top level, got a {type(data).__name__}")
    return data


def yaml_error_text(err: yaml.YAMLError) -> str:
    """A YAML syntax error in one line: where it is and what is wrong, without PyYAML's multi-line snippet."""
    mark = getattr(err, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = " ".join(str(getattr(err, "problem", None) or err).split())
    return f"not valid YAML{where}: {problem}; fix the syntax there (indentation, ':' after each key, closed brackets and quotes)"


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML config, apply `key.path=value` overrides, validate. Raises UserError on bad input."""
    return build_config(read_yaml_mapping(path), overrides, source=str(path))


def describe_fields(model: type[BaseModel] = ExperimentConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key path, default, description) for every field, nested sections flattened."""
    rows: list[tuple[str, str, str]] = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            rows.extend(describe_fields(ann, f"{prefix}{name}."))
        else:
            rows.append((f"{prefix}{name}", repr(field.get_default(call_default_factory=True)), field.description or ""))
    return rows
