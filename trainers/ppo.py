"""``ppo`` (experimental): BELLE's classic RLHF, PPO against a learned reward model, on prompt
records (``{messages, answer}``, data source ``prompts``; the answer is not used).

Each optimizer step samples one completion per prompt from the current policy (grpo's
sampler: a step-seeded RNG, so a resumed run samples what an uninterrupted one does), scores
[prompt + completion] with the reward model of an ``rm`` run (``ppo.reward_model``; its score
at the last token), and turns it into per-token rewards: ``-kl_coef * (logp - logp_ref)`` on
every completion token plus the score on the last one (Ziegler et al. 2019). A value head (one
``nn.Linear`` on the policy's last hidden state, trained with it) gives the values for GAE; the
loss is PPO's clipped policy loss plus ``vf_coef`` times the clipped value loss. ``kl_coef``
follows Ziegler et al.'s adaptive controller once per optimizer step and travels in the
checkpoint (DeepSpeed's client state), so a resume is exact.

One optimisation pass per rollout (``ppo_epochs: 1``): the engine runs one optimizer step per
batch of rows, so the ratio is 1 and both clips are inactive (the forms are kept). The reference
is the starting model: a frozen copy (full policy) or the base with the adapter off (LoRA).

The result is the policy as a plain HF folder (or an adapter) plus ``value_head.safetensors``
beside it (:func:`load_value_head`).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from duma.config import Strict
from duma.errors import ConfigError, DumaError
from duma.trainers.base import PhaseBar
from duma.trainers.config import RunConfig
from duma.trainers.grpo import GRPODataConfig, GRPOTrainer, PromptRow, prompt_rows, sampling_seed
from duma.trainers.lora import LoraPolicyTrainer, LoraSettings

if TYPE_CHECKING:
    import torch

ROWS_KEY = "ppo_rows"
VALUE_HEAD_FILE = "value_head.safetensors"
KL_STATE_KEY = "ppo_kl_coef"  # the checkpoint's client-state key of the adaptive KL coefficient


class PPOSettings(Strict):
    reward_model: Path = Field(description="Folder of an 'rm' run (its output_dir): scores prompt + completion.")
    max_new_tokens: int = Field(32, ge=1, description="Longest completion, in tokens.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature (log-probs use the same).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling; 1 = off.")
    top_k: int = Field(0, ge=0, description="Top-k sampling; 0 = off.")
    kl_coef: float = Field(0.05, ge=0, description="Initial weight of the per-token KL penalty to the reference.")
    kl_target: float | None = Field(6.0, gt=0, description="Adaptive KL: the per-completion KL (nats) the "
                                    "coefficient steers to; null = a fixed coefficient.")
    kl_horizon: int = Field(10000, ge=1, description="Adaptive KL: the controller's horizon, in samples.")
    gamma: float = Field(1.0, ge=0, le=1, description="Discount over completion tokens.")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda.")
    clip_eps: float = Field(0.2, gt=0, lt=1, description="PPO clip range of the probability ratio.")
    value_clip_eps: float = Field(0.2, gt=0, description="Clip range of the value around its rollout value.")
    vf_coef: float = Field(0.1, ge=0, description="Weight of the value loss.")
    ppo_epochs: int = Field(1, ge=1, le=1, description="Optimisation passes per rollout (only 1 for now: "
                            "the engine takes one optimizer step per batch of prompts).")
    whiten_advantages: bool = Field(True, description="Normalise advantages over the micro-batch's tokens.")

    @property
    def group_size(self) -> int:
        """One completion per prompt (grpo's sampler reads this)."""
        return 1


class PPOConfig(RunConfig):
    """Run config of the ``ppo`` trainer; ``data.source`` reads prompt records.
    ``training.batch_size`` counts prompts; ``data.max_length`` bounds prompt + completion."""

    method: Literal["ppo"] = "ppo"
    data: GRPODataConfig
    ppo: PPOSettings
    lora: LoraSettings | None = Field(None, description="Train a LoRA adapter as the policy (base frozen).")

    @model_validator(mode="after")
    def _check(self) -> PPOConfig:
        if self.training.packing:
            raise ValueError("training.packing: ppo samples a completion per prompt; set packing false")
        if self.training.zero_stage == 3:
            raise ValueError("training.zero_stage: ppo samples with the whole model on every process; "
                             "use zero_stage 0, 1 or 2")
        if self.data.max_length <= self.ppo.max_new_tokens:
            raise ValueError(f"data.max_length ({self.data.max_length}) must exceed ppo.max_new_tokens "
                             f"({self.ppo.max_new_tokens}): it bounds prompt + completion")
        return self


# ----------------------------------------------------------------------------- the maths

class AdaptiveKLController:
    """Ziegler et al.'s proportional controller: ``coef *= 1 + clip(kl / target - 1, -0.2, 0.2)
    * n / horizon`` after each batch of ``n`` samples; without a target the coefficient stays."""

    def __init__(self, init: float, target: float | None, horizon: int) -> None:
        self.value, self.target, self.horizon = float(init), target, horizon

    def update(self, current_kl: float, n_samples: int) -> float:
        if self.target is not None:
            error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
            self.value *= 1.0 + error * n_samples / self.horizon
        return self.value


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over each row's tokens (``mask`` 1 for a prefix of
    tokens; the state after the last one is terminal, value 0). Returns (advantages, returns),
    zero outside the mask."""
    import torch

    mask = mask.to(values.dtype)
    # The next state of each token: after the last one it is terminal (value 0, no bootstrap).
    next_mask = torch.cat([mask[:, 1:], torch.zeros_like(mask[:, :1])], dim=1)
    next_values = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], dim=1) * next_mask
    deltas = rewards + gamma * next_values - values
    advantages = torch.zeros_like(values)
    last = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        last = (deltas[:, t] + gamma * lam * last * next_mask[:, t]) * mask[:, t]
        advantages[:, t] = last
    return advantages, (advantages + values) * mask


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``(x - mean) / std`` over the masked entries (0 elsewhere); a single entry only centres."""
    import torch

    m = mask.to(x.dtype)
    n = m.sum().clamp(min=1)
    mean = (x * m).sum() / n
    centred = (x - mean) * m
    if n <= 1:
        return centred
    var = (centred ** 2).sum() / (n - 1)
    return centred * torch.rsqrt(var + eps)


# ----------------------------------------------------------------------------- the model

def _policy_with_value_class() -> type:
    import torch
    from torch import nn

    class PolicyWithValue(nn.Module):
        """The causal LM (or its peft wrapper) and a scalar value head on its last hidden state:
        one module, so DeepSpeed optimises and checkpoints both."""

        def __init__(self, policy: Any, hidden_size: int) -> None:
            super().__init__()
            self.policy = policy
            self.value_head = nn.Linear(hidden_size, 1)
            nn.init.zeros_(self.value_head.weight)  # values start at 0: no random baseline
            nn.init.zeros_(self.value_head.bias)

        def forward(self, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
            """(logits, values) per position."""
            out = self.policy(**kwargs, output_hidden_states=True)
            values = self.value_head(out.hidden_states[-1]).squeeze(-1)
            return out.logits, values

        def generate(self, **kwargs: Any) -> Any:
            return self.policy.generate(**kwargs)

        @property
        def generation_config(self) -> Any:
            return getattr(self.policy, "generation_config", None)

    return PolicyWithValue


def wrap_policy(policy: Any) -> Any:
    """``policy`` with a fresh (zero) value head, as one ``nn.Module``."""
    return _policy_with_value_class()(policy, int(policy.config.hidden_size))


def load_value_head(folder: Path | str) -> Any:
    """The value head a ``ppo`` run saved beside its policy, as an ``nn.Linear``."""
    import torch
    from safetensors.torch import load_file

    path = Path(folder) / VALUE_HEAD_FILE
    if not path.is_file():
        raise DumaError(f"{folder} holds no {VALUE_HEAD_FILE}", "give the output_dir of a ppo run")
    state = load_file(str(path))
    head = torch.nn.Linear(state["weight"].shape[1], 1)
    head.load_state_dict(state)
    return head.eval()


# ----------------------------------------------------------------------------- the trainer

class PPOTrainer(LoraPolicyTrainer):
    """RLHF with PPO against a reward model (experimental)."""

    name = "ppo"
    config_class = PPOConfig
    description = "PPO against a reward model from an rm run, value head, adaptive KL (experimental)"
    repack = False

    # grpo's sampler (settings.group_size is 1 here) and stop tokens.
    sample = GRPOTrainer.sample
    stop_ids = GRPOTrainer.stop_ids

    def __init__(self, config: RunConfig, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.settings: PPOSettings = config.ppo  # type: ignore[attr-defined]
        self.kl = AdaptiveKLController(self.settings.kl_coef, self.settings.kl_target, self.settings.kl_horizon)
        self.reference: Any = None
        self.reward_model: Any = None
        self._step_kl: list[float] = [0.0, 0.0]  # this optimizer step's (sum of completion KLs, completions)

    # --- checks and data

    def prepare(self) -> None:
        """Refuse a missing reward model before anything else, then load it after the data."""
        from duma.trainers.rm import REWARD_FILE, load_reward_model

        folder = self.settings.reward_model
        if not (folder / REWARD_FILE).is_file():
            what = "does not exist" if not folder.exists() else f"is not a reward model folder (no {REWARD_FILE})"
            raise ConfigError(f"ppo.reward_model: {folder} {what}",
                              "train one first (duma train configs/examples/rm_tiny.yaml) and give its output_dir")
        super().prepare()
        self.reward_model = load_reward_model(folder)

    def build_samples(self, tokenizer: Any) -> list[PromptRow]:  # type: ignore[override]
        return prompt_rows(self, tokenizer, self.settings.max_new_tokens)

    def collate(self, rows: Sequence[PromptRow], pad_id: int) -> dict[str, Any]:  # type: ignore[override]
        return {ROWS_KEY: list(rows)}

    def loss_weight(self, batch: dict[str, Any]) -> int:
        return len(batch[ROWS_KEY])

    # --- model, reference, checkpointed KL coefficient

    def prepare_model(self, model: Any) -> Any:
        return wrap_policy(super().prepare_model(model))

    def on_engine_ready(self, engine: Any, bar: PhaseBar) -> None:
        """Freeze the starting policy as the reference (a fresh LoRA: the base, adapter off), put
        the reward model beside the policy, and carry ``kl_coef`` in the engine's checkpoints."""
        device = next(engine.module.parameters()).device
        self.reward_model.model.to(device)
        if self.lora is None or self.start_adapter is not None:
            self.reference = copy.deepcopy(engine.module.policy).eval()
            for p in self.reference.parameters():
                p.requires_grad_(False)
        save, load = engine.save_checkpoint, engine.load_checkpoint

        def save_checkpoint(save_dir: str, tag: Any = None, client_state: dict | None = None, **kw: Any) -> Any:
            return save(save_dir, tag=tag, client_state={**(client_state or {}), KL_STATE_KEY: self.kl.value}, **kw)

        def load_checkpoint(*args: Any, **kw: Any) -> Any:
            path, client = load(*args, **kw)
            if client and KL_STATE_KEY in client:
                self.kl.value = float(client[KL_STATE_KEY])
            return path, client

        engine.save_checkpoint, engine.load_checkpoint = save_checkpoint, load_checkpoint

    # --- the loss

    def forward(self, model: Any, sampled: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Completion-token log-probs (at the sampling temperature) and values, in float32:
        position t's logits and value belong to the state before completion token t."""
        width = int(sampled["prompt_width"])
        seq = sampled["sequences"]
        logits, values = model(input_ids=seq, attention_mask=sampled["attention_mask"],
                               position_ids=sampled["position_ids"], use_cache=False)
        logits = logits[:, width - 1:-1].float() / self.settings.temperature
        logps = logits.gather(-1, seq[:, width:].unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
        return logps, values[:, width - 1:-1].float()

    def reference_logps(self, engine: Any, sampled: dict[str, torch.Tensor]) -> torch.Tensor:
        import torch

        width = int(sampled["prompt_width"])
        seq = sampled["sequences"]
        kw = {"input_ids": seq, "attention_mask": sampled["attention_mask"],
              "position_ids": sampled["position_ids"], "use_cache": False}
        with torch.no_grad():
            if self.reference is not None:
                logits = self.reference(**kw).logits
            else:
                with engine.module.policy.disable_adapter():  # LoRA: the base is the reference
                    logits = engine.module.policy(**kw).logits
        logits = logits[:, width - 1:-1].float() / self.settings.temperature
        return logits.gather(-1, seq[:, width:].unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)

    def scores(self, rows: Sequence[PromptRow], texts: Sequence[str]) -> torch.Tensor:
        """The reward model's score of each [prompt + completion]."""
        import torch

        convs = [[*row.messages, {"role": "assistant", "content": text}] for row, text in zip(rows, texts)]
        return torch.tensor(self.reward_model.score(convs), dtype=torch.float32)

    def compute_loss(self, engine: Any, batch: dict[str, Any]) -> tuple[Any, dict[str, float]]:
        import torch

        s = self.settings
        rows: list[PromptRow] = batch[ROWS_KEY]
        training = torch.is_grad_enabled()  # evaluate() runs under no_grad
        seed = sampling_seed(self.config.training.seed, "train" if training else "eval", int(engine.global_steps),
                             [i for r in rows for i in r.ids])
        sampled = self.sample(engine, rows, seed)
        width = int(sampled["prompt_width"])
        mask = sampled["completion_mask"].float()
        lengths = sampled["completion_mask"].sum(-1).cpu()
        ended = sampled["ended"].cpu()
        completion_ids = sampled["sequences"][:, width:].cpu()
        texts = []
        for k in range(completion_ids.shape[0]):
            ids = completion_ids[k, :int(lengths[k])].tolist()
            texts.append(self.tokenizer.decode(ids[:-1] if bool(ended[k]) else ids, skip_special_tokens=True))
        score = self.scores(rows, texts).to(mask.device)

        logps, values = self.forward(engine, sampled)
        old_logps, old_values = logps.detach(), values.detach()  # one pass per rollout
        use_reference = self.kl.value > 0 or self.kl.target is not None
        ref = self.reference_logps(engine, sampled) if use_reference else old_logps
        token_kl = (old_logps - ref) * mask
        rewards = -self.kl.value * token_kl
        last = (lengths.to(mask.device) - 1).clamp(min=0)
        rewards[torch.arange(len(rows), device=mask.device), last] += score
        advantages, returns = gae(rewards, old_values, mask, s.gamma, s.lam)
        if s.whiten_advantages:
            advantages = masked_whiten(advantages, mask)

        n_tokens = mask.sum().clamp(min=1)
        ratio = torch.exp(logps - old_logps)
        clipped = torch.clamp(ratio, 1 - s.clip_eps, 1 + s.clip_eps)
        policy_loss = (torch.max(-advantages * ratio, -advantages * clipped) * mask).sum() / n_tokens
        values_clipped = old_values + torch.clamp(values - old_values, -s.value_clip_eps, s.value_clip_eps)
        value_loss = 0.5 * (torch.max((values - returns) ** 2, (values_clipped - returns) ** 2) * mask).sum() / n_tokens
        loss = policy_loss + s.vf_coef * value_loss

        seq_kl = token_kl.sum(-1)
        metrics = {
            "reward/mean": float(score.mean()), "reward/std": float(score.std()) if len(score) > 1 else 0.0,
            "kl": float(seq_kl.mean()), "kl_coef": self.kl.value,
            "loss/policy": float(policy_loss.detach()), "loss/value": float(value_loss.detach()),
            "clip_fraction": float((((ratio - 1).abs() > s.clip_eps).float() * mask).sum() / n_tokens),
            "returns/mean": float((returns * mask).sum() / n_tokens),
            "values/mean": float((old_values * mask).sum() / n_tokens),
            "completion/length": float(lengths.float().mean()),
            "completion/unfinished": float((~ended).float().mean()),
        }
        if training:
            self._step_kl[0] += float(seq_kl.sum())
            self._step_kl[1] += len(rows)
            if engine.is_gradient_accumulation_boundary():  # this micro-batch ends the optimizer step
                self._update_kl()
        return loss, metrics

    def _update_kl(self) -> None:
        """One controller update per optimizer step, on the step's mean completion KL over all
        processes (every process keeps the same coefficient)."""
        import torch
        import torch.distributed as dist

        total = torch.tensor(self._step_kl, dtype=torch.float64)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(total)
        kl_sum, n = total.tolist()
        self._step_kl = [0.0, 0.0]
        if n:
            self.kl.update(kl_sum / n, int(n))

    # --- result

    def save_final(self, model: Any, folder: Path) -> None:
        from safetensors.torch import save_file

        super().save_final(model.policy, folder)
        head = {k: v.detach().float().cpu().contiguous() for k, v in model.value_head.state_dict().items()}
        save_file(head, str(folder / VALUE_HEAD_FILE))
        (folder / "duma_ppo.json").write_text(json.dumps(
            {"kind": "ppo_policy", "value_head": VALUE_HEAD_FILE, "kl_coef": self.kl.value,
             "reward_model": str(Path(self.settings.reward_model).resolve())}, indent=2), encoding="utf-8")
